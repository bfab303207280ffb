-- An identity provider may take the offboarding extension off a user's SCIM resource
-- (PATCH remove with the extension's URN as path) and put it back (add or replace with an
-- empty object). Shown unless taken off.
ALTER TABLE crm.users ADD COLUMN scim_extension_hidden boolean NOT NULL DEFAULT false;
