//! Geography end to end: a real MaxMind-format database (`GeoLite2` City, fetched by
//! scripts/setup.sh), a test host that answers on a public address (inside its own
//! network namespace: no packet leaves the machine), and the agent's flows read back.
use std::{path::Path, time::Duration};

use flowtel_e2e::{
    agent::Agent,
    netns::Link,
    privileged_or_skip,
    query::{matching, points},
    receiver::Receiver,
    traffic::{Traffic, eventually},
};

const DATABASE: &str = "/var/cache/flowtel-test/GeoLite2-City.mmdb";
/// RIPE NCC's address, in Amsterdam according to the database.
const PUBLIC_PEER: &str = "193.0.6.139";

#[test]
fn public_peers_are_placed_on_the_map_and_private_ones_never() {
    if !privileged_or_skip("public_peers_are_placed_on_the_map_and_private_ones_never") {
        return;
    }
    assert!(Path::new(DATABASE).exists(), "{DATABASE} is missing: run scripts/setup.sh");
    let receiver = Receiver::grpc("127.0.0.1:0");
    let endpoint = format!("http://{}", receiver.addr);
    let agent = Agent::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("FLOWTEL_GEO_DATABASE", DATABASE)]);
    let link = Link::new("geo", 25);
    let ok = |ns: &str, args: &[&str]| {
        let status = Link::exec(ns, "ip").args(args).status().expect("ip");
        assert!(status.success(), "ip {args:?}");
    };
    ok(&link.b, &["addr", "add", &format!("{PUBLIC_PEER}/32"), "dev", &link.veth(false)]);
    ok(&link.a, &["route", "add", &format!("{PUBLIC_PEER}/32"), "dev", &link.veth(true)]);

    let mut server = Traffic::spawn(&link.b, &["tcp-server", "9800", "1", "10", "20"]);
    server.wait_line("ready");
    let mut client = Traffic::spawn(&link.a, &["tcp-client", PUBLIC_PEER, "9800", "1", "10", "20"]);
    let (client_pid, server_pid) = (client.pid().to_string(), server.pid().to_string());
    client.wait_line("done");
    client.finish();
    server.wait_line("done");
    server.finish();

    let opened = "flowtel.tcp.connections.opened";
    let client_res = [("process.pid", client_pid.as_str())];
    let server_res = [("process.pid", server_pid.as_str())];
    let delivered = eventually(Duration::from_secs(20), || {
        let got = receiver.received.snapshot();
        !matching(&points(&got, opened), &client_res, &[]).is_empty()
            && !matching(&points(&got, opened), &server_res, &[]).is_empty()
    });
    let got = receiver.received.snapshot();
    assert!(delivered, "flows never arrived; agent log:\n{}", agent.log());
    let opened_points = points(&got, opened);
    let to_public = matching(&opened_points, &client_res, &[("network.peer.address", PUBLIC_PEER)]);
    assert_eq!(to_public.len(), 1, "{to_public:#?}");
    let attrs = &to_public[0].attrs;
    assert_eq!(attrs.get("geo.country.iso_code").map(String::as_str), Some("NL"), "{attrs:?}");
    assert_eq!(attrs.get("geo.region.iso_code").map(String::as_str), Some("NL-NH"), "{attrs:?}");
    assert_eq!(attrs.get("geo.locality.name").map(String::as_str), Some("Amsterdam"), "{attrs:?}");
    // The server's peer is the client's private address: never looked up.
    for point in matching(&points(&got, "flowtel.network.io"), &server_res, &[]) {
        assert!(point.attrs.keys().all(|k| !k.starts_with("geo.")), "geo on a private peer: {point:?}");
    }
}
