//! A pod's limits, from its annotations and labels: kubelet's bandwidth annotations (bits per
//! second, kubelet's syntax and bounds) and rein's bursts (bytes).
use std::collections::BTreeMap;

use rein::declarative::DirectionLimit;

use crate::{
    quantity::{Bandwidth, Burst, QuantityError},
    world::{NodePod, ObjectRef, Problem},
};

pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";
pub const INGRESS_BURST: &str = "rein.dev/ingress-burst";
pub const EGRESS_BURST: &str = "rein.dev/egress-burst";

/// Every key the agent reads, as an annotation or a label.
pub const KEYS: [&str; 4] = [
    EGRESS_BANDWIDTH,
    INGRESS_BANDWIDTH,
    EGRESS_BURST,
    INGRESS_BURST,
];

/// Reasons of a pod's problems, as its Events name them.
pub const INVALID_BANDWIDTH: &str = "InvalidBandwidth";
pub const INVALID_BURST: &str = "InvalidBurst";
pub const BURST_WITHOUT_RATE: &str = "BurstWithoutRate";

/// What a pod asks for: each direction's limit, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// What the pod sends (`kubernetes.io/egress-bandwidth`).
    pub egress: Option<DirectionLimit>,
    /// What the pod receives (`kubernetes.io/ingress-bandwidth`).
    pub ingress: Option<DirectionLimit>,
}

impl PodLimits {
    pub fn is_empty(&self) -> bool {
        self.egress.is_none() && self.ingress.is_none()
    }
}

/// The pod as problems and conditions name it.
pub fn pod_ref(pod: &NodePod) -> ObjectRef {
    ObjectRef {
        kind: "Pod",
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        uid: pod.uid.clone(),
    }
}

/// Where a key's value was found.
#[derive(Clone, Copy)]
enum Source {
    Annotation,
    Label,
}

/// A key's value: the annotation's when both are given (annotations are where kubelet reads
/// the bandwidth; a label is the original design's way), else the label's.
fn lookup<'a>(pod: &'a NodePod, key: &str) -> Option<(Source, &'a str)> {
    let find = |map: &'a BTreeMap<String, String>| map.get(key).map(String::as_str);
    find(&pod.annotations)
        .map(|value| (Source::Annotation, value))
        .or_else(|| find(&pod.labels).map(|value| (Source::Label, value)))
}

/// The pod's limits, or the first problem of its keys (in the order of [`KEYS`]): then nothing
/// is to be applied for the pod, not even a direction whose keys are valid, so that a typo
/// never leaves a half-limited pod.
pub fn pod_limits(pod: &NodePod) -> Result<PodLimits, Box<Problem>> {
    read_limits(pod).map_err(|(reason, message)| {
        Box::new(Problem {
            object: pod_ref(pod),
            reason,
            message,
        })
    })
}

/// A problem's reason and message.
type Invalid = (&'static str, String);

fn read_limits(pod: &NodePod) -> Result<PodLimits, Invalid> {
    fn parsed<T: std::str::FromStr<Err = QuantityError>>(
        pod: &NodePod,
        key: &str,
        reason: &'static str,
    ) -> Result<Option<T>, Invalid> {
        let Some((source, value)) = lookup(pod, key) else {
            return Ok(None);
        };
        let source = match source {
            Source::Annotation => "annotation",
            Source::Label => "label",
        };
        value
            .parse()
            .map(Some)
            .map_err(|error| (reason, format!("{source} {key}: {error}")))
    }
    let egress = parsed::<Bandwidth>(pod, EGRESS_BANDWIDTH, INVALID_BANDWIDTH)?;
    let ingress = parsed::<Bandwidth>(pod, INGRESS_BANDWIDTH, INVALID_BANDWIDTH)?;
    let egress_burst = parsed::<Burst>(pod, EGRESS_BURST, INVALID_BURST)?;
    let ingress_burst = parsed::<Burst>(pod, INGRESS_BURST, INVALID_BURST)?;
    let direction =
        |rate: Option<Bandwidth>, burst: Option<Burst>, rate_key, burst_key| match (rate, burst) {
            (Some(rate), burst) => Ok(Some(DirectionLimit {
                rate: rate.rate(),
                burst: burst.map(Burst::size),
            })),
            (None, Some(_)) => Err((
                BURST_WITHOUT_RATE,
                format!("{burst_key} is given without {rate_key}: a burst needs its rate"),
            )),
            (None, None) => Ok(None),
        };
    Ok(PodLimits {
        egress: direction(egress, egress_burst, EGRESS_BANDWIDTH, EGRESS_BURST)?,
        ingress: direction(ingress, ingress_burst, INGRESS_BANDWIDTH, INGRESS_BURST)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn pod(annotations: &[(&str, &str)], labels: &[(&str, &str)]) -> NodePod {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        NodePod {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "6b1f5c3e-0d1a-4c6e-9a55-0c1e2f3a4b5c".into(),
            labels: map(labels),
            annotations: map(annotations),
            place: None,
        }
    }

    fn limit(rate: u64, burst: Option<u64>) -> Option<DirectionLimit> {
        Some(DirectionLimit {
            rate: rein::units::Rate::from_bits(rate).unwrap(),
            burst: burst.map(|b| rein::units::Size::from_bytes(b).unwrap()),
        })
    }

    #[test]
    fn annotations_give_each_directions_rate_and_burst() {
        let limits = pod_limits(&pod(
            &[
                (EGRESS_BANDWIDTH, "10M"),
                (INGRESS_BANDWIDTH, "1.5G"),
                (EGRESS_BURST, "64Ki"),
            ],
            &[],
        ))
        .unwrap();
        assert_eq!(limits.egress, limit(10_000_000, Some(65_536)));
        assert_eq!(limits.ingress, limit(1_500_000_000, None));
        assert!(pod_limits(&pod(&[], &[("app", "web")])).unwrap().is_empty());
    }

    #[test]
    fn labels_count_and_an_annotation_wins_over_a_label() {
        let limits = pod_limits(&pod(
            &[(EGRESS_BANDWIDTH, "10M")],
            &[
                (EGRESS_BANDWIDTH, "20M"),
                (INGRESS_BANDWIDTH, "5M"),
                (INGRESS_BURST, "1M"),
            ],
        ))
        .unwrap();
        assert_eq!(limits.egress, limit(10_000_000, None));
        assert_eq!(limits.ingress, limit(5_000_000, Some(1_000_000)));
        // A burst by annotation for a rate by label is one direction's limit.
        let limits = pod_limits(&pod(
            &[(EGRESS_BURST, "128Ki")],
            &[(EGRESS_BANDWIDTH, "1M")],
        ))
        .unwrap();
        assert_eq!(limits.egress, limit(1_000_000, Some(131_072)));
    }

    #[test]
    fn an_invalid_value_is_a_problem_naming_key_value_and_bound_and_nothing_applies() {
        let problem = |annotations: &[(&str, &str)], labels: &[(&str, &str)]| {
            *pod_limits(&pod(annotations, labels)).unwrap_err()
        };
        // The valid egress does not apply either.
        let p = problem(
            &[(EGRESS_BANDWIDTH, "10M"), (INGRESS_BANDWIDTH, "100")],
            &[],
        );
        assert_eq!(p.reason, INVALID_BANDWIDTH);
        assert_eq!(
            p.message,
            "annotation kubernetes.io/ingress-bandwidth: \"100\" is below the lowest bandwidth, \
             1k (1000 bit/s)"
        );
        assert_eq!(
            (
                p.object.kind,
                p.object.namespace.as_str(),
                p.object.name.as_str()
            ),
            ("Pod", "default", "web-0")
        );
        let p = problem(&[], &[(EGRESS_BANDWIDTH, "2P")]);
        assert_eq!(p.reason, INVALID_BANDWIDTH);
        assert!(
            p.message
                .starts_with("label kubernetes.io/egress-bandwidth: \"2P\" is above")
                && p.message.contains("1P"),
            "{}",
            p.message
        );
        let p = problem(&[(EGRESS_BANDWIDTH, "10 Mbit")], &[]);
        assert_eq!(p.reason, INVALID_BANDWIDTH);
        assert!(
            p.message.contains("\"10 Mbit\" is not a quantity"),
            "{}",
            p.message
        );
        let p = problem(&[(EGRESS_BANDWIDTH, "10M"), (EGRESS_BURST, "1k")], &[]);
        assert_eq!(p.reason, INVALID_BURST);
        assert!(
            p.message
                .starts_with("annotation rein.dev/egress-burst: \"1k\" is below")
                && p.message.contains("1500 bytes"),
            "{}",
            p.message
        );
        let p = problem(&[(INGRESS_BANDWIDTH, "10M"), (INGRESS_BURST, "2Gi")], &[]);
        assert_eq!(p.reason, INVALID_BURST);
        let p = problem(&[(INGRESS_BANDWIDTH, "10M"), (EGRESS_BURST, "64Ki")], &[]);
        assert_eq!(p.reason, BURST_WITHOUT_RATE);
        assert_eq!(
            p.message,
            "rein.dev/egress-burst is given without kubernetes.io/egress-bandwidth: a burst needs \
             its rate"
        );
        // A valid annotation hides an invalid label of the same key.
        assert!(
            pod_limits(&pod(
                &[(EGRESS_BANDWIDTH, "1M")],
                &[(EGRESS_BANDWIDTH, "x")]
            ))
            .is_ok()
        );
        // Every message is one line.
        for p in [
            problem(&[(EGRESS_BANDWIDTH, "1\n2")], &[]),
            problem(&[(EGRESS_BURST, "1")], &[]),
        ] {
            assert!(!p.message.contains('\n'), "{}", p.message);
        }
    }
}
