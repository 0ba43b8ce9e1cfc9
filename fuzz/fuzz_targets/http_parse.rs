//! The HTTP head parsers as the agent runs them on whatever starts like HTTP on a
//! socket (the kernel's sniff looks at eight bytes only): request heads (pipelined,
//! truncated, oversized), response heads, and the route of every path found.
//! Run: `cargo +nightly fuzz run http_parse fuzz/corpus/http_parse` (from the repository root).
#![no_main]

#[path = "../../exporter/src/aggregation/http/parse.rs"]
mod parse;
#[path = "../../exporter/src/aggregation/http/route.rs"]
mod route;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let routes = route::Routes::new(&["/users/{id}".to_owned()], true);
    if let parse::Parsed::Heads(heads) = parse::requests(data) {
        for head in heads {
            let _ = routes.route(&head.path);
        }
    }
    let _ = parse::responses(data);
});
