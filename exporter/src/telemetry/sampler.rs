//! Which HTTP exchanges become spans: the standard `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG`, decided per trace so both ends of an exchange seen on this
//! host agree. Metrics never depend on it: every exchange reaches the histograms.
use opentelemetry::trace::{TraceFlags, TraceId};

/// The decision for a trace without a parent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Sampled when the trace id's lower 64 bits fall below this share of their range
    /// (the `TraceIdRatioBased` rule: the same trace id always gets the same answer).
    Ratio(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpanSampler {
    pub root: Root,
    /// A request carrying a `traceparent` follows its sampled flag (`parentbased_*`).
    pub parent_based: bool,
}

impl Default for SpanSampler {
    /// The OpenTelemetry SDKs' default: `parentbased_always_on`.
    fn default() -> Self {
        Self { root: Root::AlwaysOn, parent_based: true }
    }
}

pub const ACCEPTED: &str =
    "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio";

impl SpanSampler {
    /// From the variables' values; `Err` says what is wrong.
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || -> Result<f64, String> {
            match arg {
                None => Ok(1.0),
                Some(text) => match text.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(format!("OTEL_TRACES_SAMPLER_ARG {text:?} is not a ratio between 0 and 1")),
                },
            }
        };
        let (root, parent_based) = match name.map(str::to_ascii_lowercase).as_deref() {
            None | Some("parentbased_always_on") => (Root::AlwaysOn, true),
            Some("always_on") => (Root::AlwaysOn, false),
            Some("always_off") => (Root::AlwaysOff, false),
            Some("parentbased_always_off") => (Root::AlwaysOff, true),
            Some("traceidratio") => (Root::Ratio(ratio()?), false),
            Some("parentbased_traceidratio") => (Root::Ratio(ratio()?), true),
            Some(other) => return Err(format!("OTEL_TRACES_SAMPLER {other:?} is not one of: {ACCEPTED}")),
        };
        Ok(Self { root, parent_based })
    }

    /// Whether the trace's spans are kept; `remote_parent`: the flags of the request's
    /// `traceparent`, when it had one.
    pub fn sampled(&self, trace: TraceId, remote_parent: Option<TraceFlags>) -> bool {
        if self.parent_based
            && let Some(flags) = remote_parent
        {
            return flags.is_sampled();
        }
        match self.root {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio(ratio) => {
                let low = u64::from_be_bytes(trace.to_bytes()[8..].try_into().unwrap_or_default());
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "ratio is in [0, 1]")]
                let bound = (ratio * u64::MAX as f64) as u64;
                ratio >= 1.0 || low < bound
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_names_and_their_argument() {
        assert_eq!(SpanSampler::parse(None, None), Ok(SpanSampler::default()));
        assert_eq!(
            SpanSampler::parse(Some("traceidratio"), Some("0.25")),
            Ok(SpanSampler { root: Root::Ratio(0.25), parent_based: false })
        );
        assert_eq!(
            SpanSampler::parse(Some("parentbased_always_off"), None),
            Ok(SpanSampler { root: Root::AlwaysOff, parent_based: true })
        );
        assert!(SpanSampler::parse(Some("traceidratio"), Some("1.5")).unwrap_err().contains("between 0 and 1"));
        assert!(SpanSampler::parse(Some("jaeger_remote"), None).unwrap_err().contains("parentbased_traceidratio"));
    }

    #[test]
    fn a_ratio_keeps_about_its_share_and_the_same_trace_always_gets_the_same_answer() {
        let sampler = SpanSampler::parse(Some("traceidratio"), Some("0.3")).unwrap();
        let ids = (0..10_000u128).map(|i| TraceId::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)));
        let kept = ids.clone().filter(|&id| sampler.sampled(id, None)).count();
        assert!((2_700..=3_300).contains(&kept), "kept {kept} of 10,000");
        assert!(ids.take(100).all(|id| sampler.sampled(id, None) == sampler.sampled(id, None)));
    }

    #[test]
    fn parent_based_follows_the_requests_sampled_flag() {
        let sampler = SpanSampler::parse(Some("parentbased_traceidratio"), Some("0")).unwrap();
        let trace = TraceId::from(7u128);
        assert!(sampler.sampled(trace, Some(TraceFlags::SAMPLED)));
        assert!(!sampler.sampled(trace, Some(TraceFlags::default())));
        assert!(!sampler.sampled(trace, None));
        let plain = SpanSampler::parse(Some("traceidratio"), Some("0")).unwrap();
        assert!(!plain.sampled(trace, Some(TraceFlags::SAMPLED)), "not parent based: the ratio decides");
    }
}
