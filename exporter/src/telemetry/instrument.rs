//! Instruments made from their contract entry (`flowtel_semconv::metric`): name, unit
//! and description always come together.
use flowtel_semconv::MetricName;
use opentelemetry::metrics::{Counter, Gauge, Meter};

pub fn counter(meter: &Meter, m: MetricName) -> Counter<u64> {
    meter.u64_counter(m.name).with_unit(m.unit).with_description(m.description).build()
}

pub fn gauge(meter: &Meter, m: MetricName) -> Gauge<u64> {
    meter.u64_gauge(m.name).with_unit(m.unit).with_description(m.description).build()
}
