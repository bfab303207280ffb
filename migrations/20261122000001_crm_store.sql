-- The reference CRM store: what a multi-tenant CRM keeps about companies, users and
-- everything a user owns. offboard acts on it; the host CRM owns it in production.
-- Every table carries company_id so every query can be scoped to one tenant.

CREATE SCHEMA IF NOT EXISTS crm;

CREATE TABLE crm.companies (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    seats      integer NOT NULL CHECK (seats >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.users (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id              bigint NOT NULL REFERENCES crm.companies (id),
    -- Personal data: erased (set to NULL) when the user is deleted.
    name                    text,
    email                   text,
    phone                   text,
    picture_url             text,
    role                    text NOT NULL CHECK (role IN ('admin', 'regular')),
    account_settings_access boolean NOT NULL DEFAULT false,
    status                  text NOT NULL DEFAULT 'active'
                            CHECK (status IN ('active', 'deactivated', 'deleted')),
    -- A paid seat; deactivation releases it, reactivation takes one.
    holds_seat              boolean NOT NULL DEFAULT true,
    created_at              timestamptz NOT NULL DEFAULT now(),
    deactivated_at          timestamptz,
    deleted_at              timestamptz,
    CONSTRAINT deleted_users_keep_no_personal_data CHECK (
        status <> 'deleted'
        OR (name IS NULL AND email IS NULL AND phone IS NULL AND picture_url IS NULL)
    )
);
CREATE UNIQUE INDEX users_email_unique_per_company ON crm.users (company_id, lower(email))
    WHERE email IS NOT NULL;
CREATE INDEX users_company ON crm.users (company_id, id);

-- Users a filter can be built on: a deleted user can no longer be chosen.
CREATE VIEW crm.filter_candidates AS
    SELECT id, company_id, status FROM crm.users WHERE status <> 'deleted';

-- Owned items. Each is taken oldest first (created_at, id) when reassigned.
CREATE TABLE crm.leads (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    title      text NOT NULL,
    status     text NOT NULL CHECK (status IN ('open', 'converted', 'archived')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE crm.deals (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    title      text NOT NULL,
    value      numeric(14, 2) NOT NULL DEFAULT 0,
    status     text NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE crm.persons (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE crm.products (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE crm.activities (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    subject    text NOT NULL,
    done       boolean NOT NULL DEFAULT false,
    due_at     timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE crm.projects (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    title      text NOT NULL,
    status     text NOT NULL CHECK (status IN ('open', 'completed', 'canceled')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE crm.project_tasks (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    project_id bigint REFERENCES crm.projects (id),
    title      text NOT NULL,
    status     text NOT NULL CHECK (status IN ('pending', 'done')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX leads_owner ON crm.leads (owner_id, created_at, id);
CREATE INDEX deals_owner ON crm.deals (owner_id, created_at, id);
CREATE INDEX persons_owner ON crm.persons (owner_id, created_at, id);
CREATE INDEX products_owner ON crm.products (owner_id, created_at, id);
CREATE INDEX activities_owner ON crm.activities (owner_id, created_at, id);
CREATE INDEX projects_owner ON crm.projects (owner_id, created_at, id);
CREATE INDEX project_tasks_owner ON crm.project_tasks (owner_id, created_at, id);

-- Access: revoked first so no new data arrives during an offboarding.
CREATE TABLE crm.sessions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id   bigint NOT NULL REFERENCES crm.companies (id),
    user_id      bigint NOT NULL REFERENCES crm.users (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user ON crm.sessions (user_id);
CREATE TABLE crm.api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id   bigint NOT NULL REFERENCES crm.companies (id),
    user_id      bigint NOT NULL REFERENCES crm.users (id),
    token_sha256 text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_tokens_user ON crm.api_tokens (user_id);

CREATE TABLE crm.account_syncs (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    user_id    bigint NOT NULL REFERENCES crm.users (id),
    kind       text NOT NULL CHECK (kind IN ('email', 'contacts', 'calendar', 'google_drive')),
    enabled    boolean NOT NULL DEFAULT true,
    stopped_at timestamptz,
    UNIQUE (user_id, kind)
);
CREATE TABLE crm.scheduler_links (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    user_id    bigint NOT NULL REFERENCES crm.users (id),
    slug       text NOT NULL UNIQUE,
    expires_at timestamptz
);
CREATE INDEX scheduler_links_user ON crm.scheduler_links (user_id);

CREATE TABLE crm.app_installs (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id     bigint NOT NULL REFERENCES crm.companies (id),
    app_key        text NOT NULL,
    installed_by   bigint NOT NULL REFERENCES crm.users (id),
    -- A shared install serves the whole company; only admins install them.
    shared         boolean NOT NULL DEFAULT false,
    status         text NOT NULL DEFAULT 'installed' CHECK (status IN ('installed', 'uninstalled')),
    uninstalled_at timestamptz
);
CREATE INDEX app_installs_company ON crm.app_installs (company_id, installed_by);

CREATE TABLE crm.webhooks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id  bigint NOT NULL REFERENCES crm.companies (id),
    created_by  bigint NOT NULL REFERENCES crm.users (id),
    event       text NOT NULL,
    url         text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    disabled_at timestamptz
);
CREATE INDEX webhooks_creator ON crm.webhooks (created_by);

-- Insights.
CREATE TABLE crm.dashboards (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id          bigint NOT NULL REFERENCES crm.companies (id),
    owner_id            bigint NOT NULL REFERENCES crm.users (id),
    title               text NOT NULL,
    shared              boolean NOT NULL DEFAULT false,
    public_link_enabled boolean NOT NULL DEFAULT false
);
CREATE INDEX dashboards_owner ON crm.dashboards (owner_id);
CREATE TABLE crm.reports (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    title      text NOT NULL,
    shared     boolean NOT NULL DEFAULT false,
    -- Set when a shared report stops being reachable by others (owner deactivated).
    closed_at  timestamptz
);
CREATE INDEX reports_owner ON crm.reports (owner_id);

-- Workflow automation.
CREATE TABLE crm.automations (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id       bigint NOT NULL REFERENCES crm.companies (id),
    creator_id       bigint NOT NULL REFERENCES crm.users (id),
    name             text NOT NULL,
    active           boolean NOT NULL DEFAULT true,
    -- Users named in triggers or conditions ("when deal owner is …").
    trigger_user_ids bigint[] NOT NULL DEFAULT '{}',
    needs_review     boolean NOT NULL DEFAULT false
);
CREATE INDEX automations_company ON crm.automations (company_id);
CREATE TABLE crm.assignment_rules (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id   bigint NOT NULL REFERENCES crm.companies (id),
    name         text NOT NULL,
    assignee_ids bigint[] NOT NULL DEFAULT '{}',
    active       boolean NOT NULL DEFAULT true,
    needs_review boolean NOT NULL DEFAULT false
);
CREATE INDEX assignment_rules_company ON crm.assignment_rules (company_id);

-- LeadBooster.
CREATE TABLE crm.live_chats (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id  bigint NOT NULL REFERENCES crm.companies (id),
    operator_id bigint REFERENCES crm.users (id),
    status      text NOT NULL CHECK (status IN ('open', 'closed')),
    started_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX live_chats_operator ON crm.live_chats (operator_id);
CREATE TABLE crm.chatbot_playbooks (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id          bigint NOT NULL REFERENCES crm.companies (id),
    responsible_user_id bigint NOT NULL REFERENCES crm.users (id),
    name                text NOT NULL,
    -- The notification email address came from the old responsible user.
    email_review_needed boolean NOT NULL DEFAULT false
);
CREATE INDEX chatbot_playbooks_responsible ON crm.chatbot_playbooks (responsible_user_id);
CREATE TABLE crm.web_forms (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id          bigint NOT NULL REFERENCES crm.companies (id),
    responsible_user_id bigint NOT NULL REFERENCES crm.users (id),
    name                text NOT NULL,
    email_review_needed boolean NOT NULL DEFAULT false
);
CREATE INDEX web_forms_responsible ON crm.web_forms (responsible_user_id);

-- Communication and content that stays where it is (except private emails, purged later).
CREATE TABLE crm.emails (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id  bigint NOT NULL REFERENCES crm.companies (id),
    owner_id    bigint NOT NULL REFERENCES crm.users (id),
    visibility  text NOT NULL CHECK (visibility IN ('private', 'shared')),
    linked_type text CHECK (linked_type IN ('deal', 'person', 'lead', 'project')),
    linked_id   bigint,
    subject     text NOT NULL,
    body        text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX emails_owner ON crm.emails (owner_id, visibility);
CREATE TABLE crm.email_templates (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    name       text NOT NULL,
    body       text NOT NULL,
    shared     boolean NOT NULL DEFAULT false
);
CREATE TABLE crm.notes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id  bigint NOT NULL REFERENCES crm.companies (id),
    owner_id    bigint NOT NULL REFERENCES crm.users (id),
    linked_type text,
    linked_id   bigint,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE crm.files (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    name       text NOT NULL,
    url        text NOT NULL
);
CREATE TABLE crm.filters (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id bigint NOT NULL REFERENCES crm.companies (id),
    owner_id   bigint NOT NULL REFERENCES crm.users (id),
    name       text NOT NULL,
    conditions jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE crm.campaigns (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id   bigint NOT NULL REFERENCES crm.companies (id),
    owner_id     bigint NOT NULL REFERENCES crm.users (id),
    name         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('draft', 'scheduled', 'sent')),
    scheduled_at timestamptz
);
