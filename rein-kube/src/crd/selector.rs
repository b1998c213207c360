//! Kubernetes label selectors (`metav1.LabelSelector`), read once into a form that cannot hold
//! a malformed requirement, then matched against a pod's labels as the API server does.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector that is known to be well formed: every requirement has an operator Kubernetes
/// knows and the values that operator takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `matchLabels` entries and `In`: the label is there with one of the values.
    In(String, BTreeSet<String>),
    /// The label is absent, or there with none of the values.
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Reads `selector`; the error is one line naming the bad requirement.
    pub fn parse(selector: &LabelSelector) -> Result<Self, String> {
        let mut requirements: Vec<Requirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(key, value)| Requirement::In(key.clone(), BTreeSet::from([value.clone()])))
            .collect();
        for expression in selector.match_expressions.iter().flatten() {
            let key = expression.key.clone();
            let values: BTreeSet<String> = expression.values.iter().flatten().cloned().collect();
            let operator = expression.operator.as_str();
            let requirement = match operator {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions: {key} {operator} needs at least one value"
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions: {key} {operator} takes no values"
                    ));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(format!(
                        "matchExpressions: {key} has operator {other:?}: use In, NotIn, Exists \
                         or DoesNotExist"
                    ));
                }
            };
            requirements.push(requirement);
        }
        Ok(Self { requirements })
    }

    /// Whether `labels` meet every requirement (an empty selector selects everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|requirement| match requirement {
                Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
                Requirement::NotIn(key, values) => {
                    labels.get(key).is_none_or(|v| !values.contains(v))
                }
                Requirement::Exists(key) => labels.contains_key(key),
                Requirement::DoesNotExist(key) => !labels.contains_key(key),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(json: serde_json::Value) -> Result<Selector, String> {
        Selector::parse(&serde_json::from_value(json).unwrap())
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions_all_hold() {
        let s = selector(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "team", "operator": "Exists"},
                {"key": "canary", "operator": "DoesNotExist"},
            ]
        }))
        .unwrap();
        let base = [("app", "web"), ("tier", "edge"), ("team", "a")];
        assert!(s.matches(&labels(&base)));
        // NotIn selects a pod without the label at all, as the API server does.
        assert!(s.matches(&labels(&[("env", "prod"), base[0], base[1], base[2]])));
        for (pod, why) in [
            (labels(&[("app", "db"), base[1], base[2]]), "matchLabels"),
            (labels(&[base[0], ("tier", "back"), base[2]]), "In"),
            (labels(&[base[0], base[2]]), "In without the label"),
            (
                labels(&[("env", "dev"), base[0], base[1], base[2]]),
                "NotIn",
            ),
            (labels(&[base[0], base[1]]), "Exists"),
            (
                labels(&[("canary", ""), base[0], base[1], base[2]]),
                "DoesNotExist",
            ),
        ] {
            assert!(!s.matches(&pod), "{why}: {pod:?}");
        }
    }

    #[test]
    fn an_empty_selector_selects_every_pod() {
        let s = selector(serde_json::json!({})).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("any", "thing")])));
    }

    #[test]
    fn malformed_requirements_are_refused() {
        for (expression, needle) in [
            (
                serde_json::json!({"key": "a", "operator": "In", "values": []}),
                "at least one",
            ),
            (
                serde_json::json!({"key": "a", "operator": "NotIn"}),
                "at least one",
            ),
            (
                serde_json::json!({"key": "a", "operator": "Exists", "values": ["x"]}),
                "takes no values",
            ),
            (
                serde_json::json!({"key": "a", "operator": "Equals", "values": ["x"]}),
                "Equals",
            ),
        ] {
            let error =
                selector(serde_json::json!({"matchExpressions": [expression]})).unwrap_err();
            assert!(error.contains(needle), "{error}");
        }
    }
}
