//! Label and field selectors, parsed from the `labelSelector` and `fieldSelector` query parameters.
//!
//! The grammar follows Kubernetes: comma-separated requirements, each one of `key=value`,
//! `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` (exists) or `!key`
//! (does not exist). As in Kubernetes, `!=` and `notin` also match objects without the label.
//! Field selectors support `metadata.name` and `metadata.namespace` with `=`, `==` and `!=`.

use std::collections::BTreeMap;

use serde_json::Value;

/// Why a selector could not be parsed. The message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// A requirement had no key, e.g. `=x` or `,`.
    #[error("selector requirement {0:?} has no key")]
    MissingKey(String),
    /// A `in`/`notin` set was not written as `(a,b,...)`.
    #[error(
        "selector requirement on {key:?}: expected a value set in parentheses, e.g. `{key} in (a,b)`"
    )]
    BadSet {
        /// The label key of the requirement.
        key: String,
    },
    /// Characters that are not valid in a label key or value.
    #[error("selector: invalid character {ch:?} in {part:?}; keys and values use [A-Za-z0-9._/-]")]
    InvalidCharacter {
        /// The offending character.
        ch: char,
        /// The key or value it was found in.
        part: String,
    },
    /// A field selector named a field this server does not index.
    #[error(
        "field selector: unsupported field {0:?}; supported fields are metadata.name and metadata.namespace"
    )]
    UnsupportedField(String),
    /// A field selector used an operator other than `=`, `==` or `!=`.
    #[error(
        "field selector requirement {0:?}: expected `field=value`, `field==value` or `field!=value`"
    )]
    BadFieldRequirement(String),
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`; true also when the label is absent.
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`; true also when the label is absent.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: all requirements must hold. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses a selector in the Kubernetes text form.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(SelectorError::MissingKey(part.to_string()));
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self { requirements })
    }

    /// The parsed requirements, in order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether a label map satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => !labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        self.matches(&labels_of(object))
    }
}

/// The `metadata.labels` of an object as a map; non-string values are ignored.
pub fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, ch) in text.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn check_token(token: &str) -> Result<String, SelectorError> {
    if let Some(ch) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return Err(SelectorError::InvalidCharacter {
            ch,
            part: token.to_string(),
        });
    }
    Ok(token.to_string())
}

fn check_key(key: &str, whole: &str) -> Result<String, SelectorError> {
    if key.is_empty() {
        return Err(SelectorError::MissingKey(whole.to_string()));
    }
    check_token(key)
}

fn parse_requirement(part: &str) -> Result<Requirement, SelectorError> {
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(check_key(key.trim(), part)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(
            check_key(k.trim(), part)?,
            check_token(v.trim())?,
        ));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(
            check_key(k.trim(), part)?,
            check_token(v.trim())?,
        ));
    }
    let mut words = part.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default().trim();
    let rest = words.next().unwrap_or_default().trim();
    if rest.is_empty() {
        return Ok(Requirement::Exists(check_key(key, part)?));
    }
    let key = check_key(key, part)?;
    let (negated, set) = if let Some(set) = rest.strip_prefix("notin") {
        (true, set)
    } else if let Some(set) = rest.strip_prefix("in") {
        (false, set)
    } else {
        return Err(SelectorError::BadSet { key });
    };
    let inner = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| SelectorError::BadSet { key: key.clone() })?;
    let values = inner
        .split(',')
        .map(|v| check_token(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if negated {
        Requirement::NotIn(key, values)
    } else {
        Requirement::In(key, values)
    })
}

/// A field a field selector may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `metadata.name`.
    Name,
    /// `metadata.namespace`.
    Namespace,
}

/// A parsed field selector: all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<(Field, bool, String)>,
}

impl FieldSelector {
    /// Parses `metadata.name=x,metadata.namespace!=y`.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError::BadFieldRequirement(part.to_string()));
            };
            let field = match field.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => return Err(SelectorError::UnsupportedField(other.to_string())),
            };
            requirements.push((field, equal, value.trim().to_string()));
        }
        Ok(Self { requirements })
    }

    /// Whether an object satisfies every requirement.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(field, equal, value)| {
            let pointer = match field {
                Field::Name => "/metadata/name",
                Field::Namespace => "/metadata/namespace",
            };
            let actual = object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s = LabelSelector::parse("a=1,b==2,c!=3,d in (x, y),e notin (z),f,!g").unwrap();
        assert_eq!(
            s.requirements(),
            &[
                Requirement::Equals("a".into(), "1".into()),
                Requirement::Equals("b".into(), "2".into()),
                Requirement::NotEquals("c".into(), "3".into()),
                Requirement::In("d".into(), vec!["x".into(), "y".into()]),
                Requirement::NotIn("e".into(), vec!["z".into()]),
                Requirement::Exists("f".into()),
                Requirement::DoesNotExist("g".into()),
            ]
        );
    }

    #[test]
    fn matches_like_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(!m("app=db"));
        assert!(m("app!=db"));
        assert!(m("missing!=x"), "!= matches an absent label");
        assert!(m("app in (web,db)"));
        assert!(!m("app in (db)"));
        assert!(m("app notin (db)"));
        assert!(m("missing notin (db)"), "notin matches an absent label");
        assert!(!m("missing in (db)"));
        assert!(m("tier"));
        assert!(!m("missing"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("app.kubernetes.io/name!=x,tier=front"));
    }

    #[test]
    fn rejects_bad_selectors_with_reasons() {
        assert!(matches!(
            LabelSelector::parse("=x"),
            Err(SelectorError::MissingKey(_))
        ));
        assert!(matches!(
            LabelSelector::parse("a,,b"),
            Err(SelectorError::MissingKey(_))
        ));
        assert!(matches!(
            LabelSelector::parse("a in x"),
            Err(SelectorError::BadSet { .. })
        ));
        assert!(matches!(
            LabelSelector::parse("a in (x"),
            Err(SelectorError::BadSet { .. })
        ));
        assert!(matches!(
            LabelSelector::parse("a foo (x)"),
            Err(SelectorError::BadSet { .. })
        ));
        assert!(matches!(
            LabelSelector::parse("a=b c"),
            Err(SelectorError::InvalidCharacter { ch: ' ', .. })
        ));
        assert!(matches!(
            LabelSelector::parse("a=(("),
            Err(SelectorError::InvalidCharacter { .. })
        ));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "(", ")", "!", "!!", "a in ()", "é=ü", "a=)", ",", " in (a)", "a notin", "a in(",
        ] {
            let _ = LabelSelector::parse(s);
            let _ = FieldSelector::parse(s);
        }
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns1"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches_object(&obj);
        assert!(m("metadata.name=a"));
        assert!(m("metadata.name==a,metadata.namespace=ns1"));
        assert!(!m("metadata.name!=a"));
        assert!(m("metadata.namespace!=other"));
        assert!(matches!(
            FieldSelector::parse("spec.nodeName=x"),
            Err(SelectorError::UnsupportedField(_))
        ));
        assert!(matches!(
            FieldSelector::parse("metadata.name"),
            Err(SelectorError::BadFieldRequirement(_))
        ));
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;

    #[test]
    fn random_selectors_never_panic() {
        const PIECES: &[&str] = &[
            "a",
            "b.io/c",
            "=",
            "==",
            "!=",
            "!",
            ",",
            " in ",
            " notin ",
            "(",
            ")",
            " ",
            "é",
            "x",
            "metadata.name",
            "metadata.namespace",
        ];
        for _ in 0..20000 {
            let text: String = (0..rand::random_range(0..8))
                .map(|_| PIECES[rand::random_range(0..PIECES.len())])
                .collect();
            if let Ok(s) = LabelSelector::parse(&text) {
                let _ = s.matches(&BTreeMap::from([("a".to_string(), "x".to_string())]));
            }
            let _ = FieldSelector::parse(&text);
        }
    }
}
