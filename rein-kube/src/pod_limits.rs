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
