//! `ferry demo sticky`: the plain half shows TCP merging and splitting messages; the framed half
//! delivers every message exactly, in order.

mod common;

use common::{BIN, ok};

/// The messages the demo sends (kept in step with `cmd::demo::demo_messages`).
fn expected(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("hello {i}"),
            1 => format!("ls /home/course/{i}"),
            2 => format!("get report-{i}.txt"),
            _ => format!("put {i}: {}", "data ".repeat(12)),
        })
        .collect()
}

#[test]
fn the_framed_half_delivers_every_message_exactly() {
    for (n, recv) in [(20u32, "64"), (7, "1"), (200, "1024")] {
        let out = ok(std::process::Command::new(BIN).args([
            "demo",
            "sticky",
            "--messages",
            &n.to_string(),
            "--recv-size",
            recv,
        ]));
        let framed: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("framed message #"))
            .map(|l| l.split_once(": ").expect("index: text").1)
            .collect();
        assert_eq!(framed, expected(n), "recv size {recv}\n{out}");
        assert!(
            out.contains(&format!("framed: {n}/{n} messages exact, in order")),
            "{out}"
        );
        // One line per recv on both halves.
        assert!(
            out.lines().any(|l| l.starts_with("plain recv #1 ")),
            "{out}"
        );
        assert!(
            out.lines().any(|l| l.starts_with("framed recv #1 ")),
            "{out}"
        );
    }
}

#[test]
fn the_plain_half_shows_messages_merged_and_split() {
    let out = ok(std::process::Command::new(BIN).args(["demo", "sticky", "--messages", "20"]));
    let plain: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("plain recv #"))
        .collect();
    assert!(plain.iter().any(|l| l.contains("merged")), "{out}");
    assert!(plain.iter().any(|l| l.contains("split")), "{out}");
    // Fewer recvs than sends: the boundaries were lost.
    assert!(plain.len() < 20, "{out}");
    // The bytes the plain recvs returned are exactly the messages run together.
    let joined: String = plain
        .iter()
        .map(|l| {
            let q = l.find('"').expect("quoted bytes");
            l[q + 1..l.len() - 1].to_owned()
        })
        .collect();
    assert_eq!(joined, expected(20).concat());
}

#[test]
fn bad_arguments_are_refused() {
    let out =
        common::run(std::process::Command::new(BIN).args(["demo", "sticky", "--messages", "0"]));
    assert_eq!(out.status.code(), Some(2));
}
