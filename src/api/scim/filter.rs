//! The `filter` of `GET /Users`, as identity providers send it (RFC 7644 §3.4.2.2, the
//! part Okta and Entra use): `eq` comparisons on `userName`, `externalId`, `id`,
//! `emails.value` and `emails[type eq "work"].value`, joined by `and`. Attribute names and
//! operators match case-insensitively; anything else is an `invalidFilter` error that
//! does not repeat the filter (its values are personal data).

use crate::crm::provisioning::UserFilter;

use super::{ScimError, USER_SCHEMA};

/// A parsed filter; `matches_nothing` when two comparisons of one attribute disagree.
#[derive(Debug, Default)]
pub struct Filter {
    pub users: UserFilter,
    pub matches_nothing: bool,
}

#[derive(PartialEq)]
enum Token {
    Word(String),
    Text(String),
}

/// A quoted value is an email or a user name: not shown.
impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Word(w) => f.debug_tuple("Word").field(w).finish(),
            Token::Text(_) => f.write_str("Text(..)"),
        }
    }
}

fn invalid(detail: &str) -> ScimError {
    ScimError::bad("invalidFilter", detail.to_string())
}

fn tokens(raw: &str) -> Result<Vec<Token>, ScimError> {
    let chars: Vec<char> = raw.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            if i >= chars.len() {
                return Err(invalid("a quoted value is not closed"));
            }
            i += 1;
            let quoted: String = chars[start..i].iter().collect();
            let text: String = serde_json::from_str(&quoted)
                .map_err(|_| invalid("a quoted value is not a valid JSON string"))?;
            out.push(Token::Text(text));
        } else if c == '(' || c == ')' {
            return Err(invalid(
                "grouping with parentheses is not supported; join comparisons with and",
            ));
        } else {
            // A word: an attribute path (which may hold a bracketed value filter with
            // spaces and quotes), an operator, `and`, or a bare value.
            let mut word = String::new();
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '[' {
                    let mut quoted = false;
                    while i < chars.len() {
                        let ch = chars[i];
                        word.push(ch);
                        i += 1;
                        if ch == '"' {
                            quoted = !quoted;
                        } else if ch == ']' && !quoted {
                            break;
                        }
                    }
                } else {
                    word.push(chars[i]);
                    i += 1;
                }
            }
            out.push(Token::Word(word));
        }
    }
    Ok(out)
}

/// An attribute path without the core schema's URN, lower-cased.
pub fn normalize_path(path: &str) -> String {
    let lower = path.to_ascii_lowercase();
    let prefix = format!("{}:", USER_SCHEMA.to_ascii_lowercase());
    lower.strip_prefix(&prefix).map(str::to_string).unwrap_or(lower)
}

/// The email type an `emails[type eq "…"].value` path asks for.
fn email_type_of(path: &str) -> Option<String> {
    let inner = path.strip_prefix("emails[")?.strip_suffix("].value")?;
    let words = tokens(inner).ok()?;
    match words.as_slice() {
        [Token::Word(attr), Token::Word(op), Token::Text(value)]
            if attr.eq_ignore_ascii_case("type") && op.eq_ignore_ascii_case("eq") =>
        {
            Some(value.to_ascii_lowercase())
        }
        _ => None,
    }
}

fn set(slot: &mut Option<String>, value: String, nothing: &mut bool, case_exact: bool) {
    match slot {
        // No stored value holds a control character (and PostgreSQL's text cannot hold NUL).
        _ if value.chars().any(char::is_control) => *nothing = true,
        Some(old) if (case_exact && *old != value) || !old.eq_ignore_ascii_case(&value) => {
            *nothing = true
        }
        _ => *slot = Some(value),
    }
}

pub fn parse(raw: &str) -> Result<Filter, ScimError> {
    let tokens = tokens(raw)?;
    let mut filter = Filter::default();
    let mut rest = tokens.as_slice();
    loop {
        let [Token::Word(path), Token::Word(op), value, tail @ ..] = rest else {
            return Err(invalid("expected comparisons like userName eq \"value\" joined by and"));
        };
        if !op.eq_ignore_ascii_case("eq") {
            return Err(invalid("only the eq operator is supported"));
        }
        let Token::Text(value) = value else {
            return Err(invalid("compare with a quoted string value"));
        };
        let value = value.clone();
        let path = normalize_path(path);
        let nothing = &mut filter.matches_nothing;
        let users = &mut filter.users;
        match path.as_str() {
            "username" => set(&mut users.user_name, value, nothing, false),
            "externalid" => set(&mut users.external_id, value, nothing, true),
            "emails.value" | "emails" => set(&mut users.email, value, nothing, false),
            "id" => match value.parse::<i64>() {
                Ok(id) if users.id.is_none_or(|old| old == id) => users.id = Some(id),
                _ => *nothing = true,
            },
            p => match email_type_of(p) {
                Some(kind) => {
                    set(&mut users.email, value, nothing, false);
                    set(&mut users.email_type, kind, nothing, true);
                }
                None => {
                    return Err(invalid(
                        "filters may compare userName, externalId, id, emails.value or emails[type eq \"…\"].value",
                    ));
                }
            },
        }
        match tail {
            [] => return Ok(filter),
            [Token::Word(and), more @ ..]
                if and.eq_ignore_ascii_case("and") && !more.is_empty() =>
            {
                rest = more
            }
            _ => return Err(invalid("join comparisons with and (or is not supported)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn okta_and_entra_filters_parse() {
        let f = parse(r#"userName eq "ada@example.com""#).unwrap();
        assert_eq!(f.users.user_name.as_deref(), Some("ada@example.com"));
        let f = parse(r#"externalId eq "0a21f0f2-8d2a-4f8e-bf98-7a1a2f8c1e11""#).unwrap();
        assert!(f.users.external_id.is_some());
        let f = parse(r#"emails[type eq "work"].value eq "ada@example.com" and userName eq "ada""#)
            .unwrap();
        assert_eq!(f.users.email.as_deref(), Some("ada@example.com"));
        assert_eq!(f.users.email_type.as_deref(), Some("work"));
        assert_eq!(f.users.user_name.as_deref(), Some("ada"));
        let f = parse(r#"USERNAME EQ "a \"quoted\" name""#).unwrap();
        assert_eq!(f.users.user_name.as_deref(), Some("a \"quoted\" name"));
        let f = parse(r#"urn:ietf:params:scim:schemas:core:2.0:User:userName eq "x""#).unwrap();
        assert_eq!(f.users.user_name.as_deref(), Some("x"));
    }

    #[test]
    fn contradictions_match_nothing() {
        assert!(parse(r#"userName eq "a" and userName eq "b""#).unwrap().matches_nothing);
        assert!(!parse(r#"userName eq "a" and userName eq "A""#).unwrap().matches_nothing);
        assert!(parse(r#"id eq "not-a-number""#).unwrap().matches_nothing);
        assert!(parse(r#"userName eq "a\u0000b""#).unwrap().matches_nothing);
        assert!(parse(r#"externalId eq "x\u0007""#).unwrap().matches_nothing);
        let f = parse(r#"emails[type eq "w\u0000rk"].value eq "a@example.com""#).unwrap();
        assert!(f.matches_nothing);
    }

    #[test]
    fn what_is_not_supported_is_an_invalid_filter() {
        for raw in [
            r#"userName sw "a""#,
            r#"userName eq "a" or userName eq "b""#,
            r#"title eq "x""#,
            r#"(userName eq "a")"#,
            r#"userName eq"#,
            r#"userName eq "a" and"#,
            r#"userName eq "open"#,
            "",
        ] {
            let err = parse(raw).unwrap_err();
            assert_eq!(err.scim_type, Some("invalidFilter"), "{raw}");
            assert!(!err.detail.contains("open\""), "the detail does not echo values");
        }
    }
}
