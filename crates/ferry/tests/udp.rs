//! End-to-end tests of `ferry udp serve|send|ping` with the real binary on loopback.
//!
//! Every server binds port 0 and the test reads the address from the `ferry udp listening on
//! ADDR` line; every wait is bounded; children are killed on drop. The lossy-path tests put a relay
//! between `ferry udp ping` and the server that drops, duplicates, holds back or delays chosen
//! probes by sequence number (read at the offsets `docs/UDP.md` documents), then check that
//! the ping's JSON summary reports exactly that.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous bound for anything that should take milliseconds, so a loaded machine does not
/// flake but a hang still fails.
const LIMIT: Duration = Duration::from_secs(10);

fn ferry() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // Tests read stderr; keep it free of colour codes and of the caller's log settings.
    cmd.env_remove("FERRY_LOG").env("NO_COLOR", "1");
    cmd
}

/// A running `ferry udp serve`, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Option<JoinHandle<String>>,
}

impl Server {
    /// `ferry udp serve --listen LISTEN`.
    fn echo(listen: &str) -> Server {
        Server::spawn(&["udp", "serve", "--listen", listen])
    }

    /// `ferry udp serve --upper --listen LISTEN`, the course's server.
    fn upper(listen: &str) -> Server {
        Server::spawn(&["udp", "serve", "--upper", "--listen", listen])
    }

    /// `ferry ARGS`, where ARGS run a server; waits for its address line.
    fn spawn(args: &[&str]) -> Server {
        let mut child = ferry()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning ferry udp serve");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let stderr = Some(thread::spawn(move || read_all(stderr)));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut first = String::new();
            let _ = BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let line = rx
            .recv_timeout(LIMIT)
            .expect("server printed no address line in time");
        let addr = line
            .trim_end()
            .strip_prefix("ferry udp listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address in the listening line");
        Server {
            child,
            addr,
            stderr,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sends `signal` and returns the exit status, how long the exit took, and stderr.
    fn stop_with(mut self, signal: &str) -> (ExitStatus, Duration, String) {
        let started = Instant::now();
        signal_process(self.child.id(), signal);
        let status = wait_limited(&mut self.child, LIMIT);
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, started.elapsed(), stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal_process(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

fn read_all(mut from: impl Read) -> String {
    let mut bytes = Vec::new();
    let _ = from.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn wait_limited(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `ferry ARGS` with `stdin` as input, bounded by `limit`.
fn run_ferry(args: &[&str], stdin: &[u8], limit: Duration) -> Finished {
    let started = Instant::now();
    let mut child = ferry()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ferry");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Dropping the pipe after writing is the end of input.
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || read_all(stdout));
    let err = thread::spawn(move || read_all(stderr));
    let status = wait_limited(&mut child, limit);
    writer.join().unwrap();
    Finished {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed: started.elapsed(),
    }
}

/// `ferry udp ping --json ARGS` through to its summary, which must be the only stdout line.
fn ping_json(to: SocketAddr, args: &[&str]) -> (Value, Finished) {
    let to = to.to_string();
    let mut all = vec!["udp", "ping", "--to", &to, "--json"];
    all.extend_from_slice(args);
    let done = run_ferry(&all, b"", Duration::from_secs(15));
    let summary: Value = serde_json::from_str(done.stdout.trim())
        .unwrap_or_else(|e| panic!("ping stdout is not one JSON object ({e}): {}", done.stdout));
    (summary, done)
}

fn client_socket(like: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(if like.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

fn echo_via(socket: &UdpSocket, to: SocketAddr, message: &[u8]) -> Vec<u8> {
    socket.send_to(message, to).unwrap();
    let mut buf = vec![0u8; 65_536];
    let (len, from) = socket.recv_from(&mut buf).expect("no reply within 5 s");
    assert_eq!(from, to, "reply came from somewhere else");
    buf.truncate(len);
    buf
}

fn counts(summary: &Value, keys: &[&str]) -> Vec<u64> {
    keys.iter()
        .map(|k| {
            summary[k]
                .as_u64()
                .unwrap_or_else(|| panic!("no {k} in {summary}"))
        })
        .collect()
}

#[test]
fn serve_echoes_bytes_unchanged_over_ipv4_and_ipv6() {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = Server::echo(listen);
        assert_ne!(server.port(), 0);
        assert_eq!(server.addr.is_ipv6(), listen.starts_with('['));
        let socket = client_socket(server.addr);
        let message = b"Mixed case \x00\xff\xfe bytes, not UTF-8";
        assert_eq!(echo_via(&socket, server.addr, message), message);
        assert_eq!(echo_via(&socket, server.addr, b""), b"");
    }
}

#[test]
fn a_wildcard_ipv6_server_answers_both_families() {
    let server = Server::echo("[::]:0");
    for client in ["127.0.0.1:0", "[::1]:0"] {
        let socket = UdpSocket::bind(client).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let loopback: SocketAddr = if client.starts_with('[') {
            format!("[::1]:{}", server.port())
        } else {
            format!("127.0.0.1:{}", server.port())
        }
        .parse()
        .unwrap();
        assert_eq!(echo_via(&socket, loopback, b"dual stack"), b"dual stack");
    }
}

#[test]
fn serve_upper_cases_ascii_letters_only() {
    let server = Server::upper("127.0.0.1:0");
    let socket = client_socket(server.addr);
    assert_eq!(
        echo_via(&socket, server.addr, "héllo wörld 123 ß\n".as_bytes()),
        "HéLLO WöRLD 123 ß\n".as_bytes()
    );
    assert_eq!(echo_via(&socket, server.addr, b"\xff ok"), b"\xff OK");
}

/// The course's exchange: the client sends what the user typed, the server answers it
/// upper-cased, the client prints the answer.
#[test]
fn course_client_sends_each_line_and_prints_the_upper_cased_reply() {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = Server::upper(listen);
        let to = server.addr.to_string();
        let done = run_ferry(
            &["udp", "send", "--to", &to],
            b"hello server\nnetwork programming\r\n\nlast line without newline",
            LIMIT,
        );
        assert!(done.status.success(), "{}", done.stderr);
        // No prompt: stdin is a pipe, not a terminal. Line terminators are not sent, so an
        // empty line is an empty datagram and an empty reply.
        assert_eq!(
            done.stdout,
            "HELLO SERVER\nNETWORK PROGRAMMING\n\nLAST LINE WITHOUT NEWLINE\n"
        );
        let done = run_ferry(&["udp", "send", "--to", &to, "say it louder"], b"", LIMIT);
        assert!(done.status.success(), "{}", done.stderr);
        assert_eq!(done.stdout, "SAY IT LOUDER\n");
    }
}

#[test]
fn send_gives_up_with_exit_code_3_when_nobody_answers() {
    // A bound socket that never reads: datagrams vanish without any ICMP error.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = silent.local_addr().unwrap().to_string();
    let done = run_ferry(
        &[
            "udp",
            "send",
            "--to",
            &to,
            "--timeout",
            "200",
            "--retries",
            "2",
            "hi",
        ],
        b"",
        LIMIT,
    );
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(done.stdout.is_empty());
    assert!(
        done.stderr.contains(&format!(
            "no reply from {to} after 3 attempt(s) of 200 ms each"
        )),
        "{}",
        done.stderr
    );
    // Three attempts of 200 ms each really were waited out.
    assert!(
        done.elapsed >= Duration::from_millis(600),
        "{:?}",
        done.elapsed
    );
    // Datagrams that arrived: the first attempt and both retries.
    silent.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let mut seen = 0;
    while let Ok((len, _)) = silent.recv_from(&mut buf) {
        assert_eq!(&buf[..len], b"hi");
        seen += 1;
    }
    assert_eq!(seen, 3);

    // A closed port answers with ICMP port-unreachable, which the message names.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let done = run_ferry(
        &[
            "udp",
            "send",
            "--to",
            &closed.to_string(),
            "--timeout",
            "200",
            "hi",
        ],
        b"",
        LIMIT,
    );
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(done.stderr.contains("port closed"), "{}", done.stderr);
}

#[test]
fn send_refuses_a_message_larger_than_a_datagram() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = silent.local_addr().unwrap().to_string();
    let too_big = "x".repeat(65_508);
    let done = run_ferry(&["udp", "send", "--to", &to, &too_big], b"", LIMIT);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("65508 bytes exceeds"),
        "{}",
        done.stderr
    );
}

#[test]
fn a_datagram_sent_by_nc_gets_the_upper_cased_reply() {
    let Some(nc) = which("nc") else {
        println!("note: nc is not installed; skipping the nc -u interoperability test");
        return;
    };
    let server = Server::upper("127.0.0.1:0");
    let port = server.port().to_string();
    let mut child = Command::new(nc)
        // -w 1: quit after a second of silence once stdin is done.
        .args(["-u", "-w", "1", "127.0.0.1", &port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning nc");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello from nc\n")
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let out = thread::spawn(move || read_all(stdout));
    wait_limited(&mut child, LIMIT);
    assert_eq!(out.join().unwrap(), "HELLO FROM NC\n");
}

/// `program`'s path if it is on PATH.
fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[test]
fn the_largest_datagram_round_trips() {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = Server::echo(listen);
        let socket = client_socket(server.addr);
        let message: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(echo_via(&socket, server.addr, &message), message);
        let (summary, done) = ping_json(
            server.addr,
            &["--count", "3", "--interval", "10", "--size", "65507"],
        );
        assert!(done.status.success(), "{}", done.stderr);
        assert_eq!(
            counts(&summary, &["sent", "received", "malformed"]),
            [3, 3, 0]
        );
    }
}

#[test]
fn fifty_clients_at_once_each_get_their_own_replies() {
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 20;
    let server = Server::echo("127.0.0.1:0");
    let addr = server.addr;
    let start = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                let socket = client_socket(addr);
                start.wait();
                for round in 0..ROUNDS {
                    let message = format!("client {id} round {round}");
                    assert_eq!(
                        echo_via(&socket, addr, message.as_bytes()),
                        message.as_bytes()
                    );
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client got a wrong or no reply");
    }
}

#[test]
fn debug_log_has_one_line_per_datagram() {
    let server = Server::spawn(&["--log", "debug", "udp", "serve", "--listen", "127.0.0.1:0"]);
    let socket = client_socket(server.addr);
    for message in [&b"one"[..], b"two", b"three"] {
        echo_via(&socket, server.addr, message);
    }
    let (status, _, stderr) = server.stop_with("TERM");
    assert!(status.success());
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("echoed datagram"))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines.iter().all(|l| l.contains("DEBUG")), "{stderr}");
    assert!(lines[2].contains("len=5"), "{stderr}");
}

#[test]
fn sigterm_and_sigint_stop_the_server_promptly_with_exit_0() {
    for signal in ["TERM", "INT"] {
        let server = Server::echo("127.0.0.1:0");
        let socket = client_socket(server.addr);
        assert_eq!(echo_via(&socket, server.addr, b"alive"), b"alive");
        let (status, took, stderr) = server.stop_with(signal);
        assert_eq!(status.code(), Some(0), "SIG{signal}: {stderr}");
        assert!(took < Duration::from_secs(2), "SIG{signal} took {took:?}");
        assert!(stderr.contains("udp echo server stopped"), "{stderr}");
    }
}

#[test]
fn ping_reports_a_clean_run_over_ipv4_and_ipv6() {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let server = Server::echo(listen);
        let (s, done) = ping_json(server.addr, &["--count", "20", "--interval", "5"]);
        assert!(done.status.success(), "{}", done.stderr);
        assert_eq!(
            counts(
                &s,
                &[
                    "sent",
                    "received",
                    "lost",
                    "duplicates",
                    "reordered",
                    "foreign",
                    "malformed"
                ]
            ),
            [20, 20, 0, 0, 0, 0, 0]
        );
        assert_eq!(s["loss_percent"], 0.0);
        assert_eq!(s["interrupted"], false);
        assert_eq!(s["target"], server.addr.to_string());
        assert_eq!(s["session"].as_str().map(str::len), Some(16));
        let rtt = |k: &str| s["rtt"][k].as_f64().unwrap();
        assert!(rtt("min_ms") > 0.0);
        assert!(rtt("min_ms") <= rtt("p50_ms") && rtt("p50_ms") <= rtt("p99_ms"));
        assert!(rtt("p99_ms") <= rtt("max_ms"));
        assert!(rtt("min_ms") <= rtt("avg_ms") && rtt("avg_ms") <= rtt("max_ms"));
        assert!(rtt("jitter_ms") >= 0.0 && rtt("jitter_ms") <= rtt("max_ms") - rtt("min_ms"));
    }
}

#[test]
fn ping_text_output_lists_replies_and_the_summary() {
    let server = Server::echo("127.0.0.1:0");
    let to = server.addr.to_string();
    let done = run_ferry(
        &[
            "udp", "ping", "--to", &to, "-c", "3", "-i", "5", "-s", "100",
        ],
        b"",
        LIMIT,
    );
    assert!(done.status.success(), "{}", done.stderr);
    for seq in 1..=3 {
        assert!(
            done.stdout
                .contains(&format!("100 bytes from {to}: seq={seq} rtt=")),
            "{}",
            done.stdout
        );
    }
    assert!(
        done.stdout
            .contains(&format!("--- {to} udp ping statistics ---"))
    );
    assert!(
        done.stdout
            .contains("3 sent, 3 received, 0.0% loss, 0 duplicates, 0 reordered"),
        "{}",
        done.stdout
    );
    assert!(done.stdout.contains("rtt min/avg/max/p50/p99 = "));
}

#[test]
fn ping_detects_an_upper_casing_server_and_exits_3() {
    let server = Server::upper("127.0.0.1:0");
    let (s, done) = ping_json(
        server.addr,
        &["--count", "3", "--interval", "5", "--timeout", "300"],
    );
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert_eq!(
        counts(
            &s,
            &["sent", "received", "lost", "malformed", "upper_cased"]
        ),
        [3, 0, 3, 3, 3]
    );
    assert_eq!(s["loss_percent"], 100.0);
    assert!(s["rtt"].is_null());
    assert!(done.stderr.contains("without --upper"), "{}", done.stderr);
}

#[test]
fn ping_with_no_server_reports_total_loss_and_exits_3() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (s, done) = ping_json(
        silent.local_addr().unwrap(),
        &["--count", "3", "--interval", "5", "--timeout", "200"],
    );
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert_eq!(counts(&s, &["sent", "received", "lost"]), [3, 0, 3]);
    assert!(done.stderr.contains("no valid replies"), "{}", done.stderr);
}

#[test]
fn ctrl_c_prints_the_summary_so_far() {
    let server = Server::echo("127.0.0.1:0");
    for json in [true, false] {
        // Through a relay only to see probes flowing: then ping's handlers are installed.
        let relay = Relay::start(server.addr, |_| Act::Forward, None);
        let to = relay.addr.to_string();
        let mut args = vec![
            "udp",
            "ping",
            "--to",
            &to,
            "--count",
            "1000",
            "--interval",
            "20",
        ];
        if json {
            args.push("--json");
        }
        let mut child = ferry()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let out = thread::spawn(move || read_all(stdout));
        relay.wait_for_probes(5);
        signal_process(child.id(), "INT");
        let status = wait_limited(&mut child, LIMIT);
        let stdout = out.join().unwrap();
        let forwarded = relay.finish().len() as u64;
        assert!(status.success(), "{stdout}");
        if json {
            let s: Value = serde_json::from_str(stdout.trim()).unwrap();
            assert_eq!(s["interrupted"], true);
            let [sent, received, lost, pending] =
                counts(&s, &["sent", "received", "lost", "pending"])[..]
            else {
                unreachable!()
            };
            // The relay may stop before passing on the very last probe.
            assert!((5..1000).contains(&sent), "{s}");
            assert!(
                (forwarded..=forwarded + 1).contains(&sent),
                "{s} {forwarded}"
            );
            // On loopback nothing is lost: each probe is answered or still in flight.
            assert_eq!((received + pending, lost), (sent, 0), "{s}");
            assert!(received >= 4, "{s}");
        } else {
            assert!(stdout.contains("seq=4 "), "{stdout}");
            assert!(stdout.contains("udp ping statistics"), "{stdout}");
            let sent: u64 = stdout
                .lines()
                .find_map(|l| l.split_once(" sent, "))
                .and_then(|(n, _)| n.parse().ok())
                .unwrap_or_else(|| panic!("no sent count in {stdout}"));
            assert!((forwarded..=forwarded + 1).contains(&sent), "{stdout}");
        }
    }
}

/// On a terminal the client prompts like the course's `input()`; `script` provides the pty.
#[test]
fn send_prompts_when_stdin_is_a_terminal() {
    let Some(script) = which("script") else {
        println!("note: script (util-linux) is not installed; skipping the terminal prompt test");
        return;
    };
    let server = Server::upper("127.0.0.1:0");
    let command = format!(
        "{} udp send --to {}",
        env!("CARGO_BIN_EXE_ferry"),
        server.addr
    );
    let mut child = Command::new(script)
        // -E never: the pty does not echo what is typed, so only ferry's output is seen.
        .args(["-q", "-e", "-E", "never", "-c", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning script");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld\n")
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let out = thread::spawn(move || read_all(stdout));
    let status = wait_limited(&mut child, LIMIT);
    assert!(status.success());
    // The terminal turns "\n" into "\r\n"; after the last line, end of input ends the prompt.
    assert_eq!(
        out.join().unwrap().replace('\r', ""),
        ">>> HELLO\n>>> WORLD\n>>> \n"
    );
}

/// What the relay does with a probe on its way to the server.
#[derive(Clone, Copy)]
enum Act {
    Forward,
    Drop,
    Duplicate,
    /// Hold it until the probe with this sequence number has been forwarded.
    After(u64),
    /// Hold it for this long.
    Delay(Duration),
}

/// A UDP relay between a ping client and the echo server, acting on probes by sequence number.
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Sequence numbers forwarded to the server, in order.
    forwarded: Arc<Mutex<Vec<u64>>>,
    thread: Option<JoinHandle<()>>,
}

/// Called once with the relay socket, the client's address and its first probe.
type Inject = Box<dyn FnOnce(&UdpSocket, SocketAddr, &[u8]) + Send>;

impl Relay {
    fn start(server: SocketAddr, rule: fn(u64) -> Act, inject: Option<Inject>) -> Relay {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Short, so held probes with a deadline are released on time.
        socket
            .set_read_timeout(Some(Duration::from_millis(2)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let thread = thread::spawn({
            let stop = Arc::clone(&stop);
            let forwarded = Arc::clone(&forwarded);
            move || relay_loop(socket, server, rule, inject, &stop, &forwarded)
        });
        Relay {
            addr,
            stop,
            forwarded,
            thread: Some(thread),
        }
    }

    /// Waits until at least `n` probes went through, so the client is surely running.
    fn wait_for_probes(&self, n: usize) {
        let deadline = Instant::now() + LIMIT;
        while self.forwarded.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} probes within {LIMIT:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the relay and returns the sequence numbers it forwarded, in order.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.forwarded.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The sequence number at the offset `docs/UDP.md` gives: bytes 16..24, big-endian.
fn seq_of(probe: &[u8]) -> u64 {
    u64::from_be_bytes(probe[16..24].try_into().unwrap())
}

fn relay_loop(
    socket: UdpSocket,
    server: SocketAddr,
    rule: fn(u64) -> Act,
    mut inject: Option<Inject>,
    stop: &AtomicBool,
    forwarded: &Mutex<Vec<u64>>,
) {
    let mut client = None;
    let mut held_for: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut delayed: Vec<(Instant, Vec<u8>)> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let forward = |probe: &[u8], held_for: &mut Vec<(u64, Vec<u8>)>| {
        let mut queue = vec![probe.to_vec()];
        while let Some(probe) = queue.pop() {
            socket.send_to(&probe, server).unwrap();
            let seq = seq_of(&probe);
            forwarded.lock().unwrap().push(seq);
            // Release whatever waited for this one.
            let (ready, waiting) = held_for.drain(..).partition(|(after, _)| *after == seq);
            *held_for = waiting;
            queue.extend(ready.into_iter().map(|(_, p): (u64, Vec<u8>)| p));
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        let (due, later) = delayed.drain(..).partition(|(at, _)| *at <= now);
        delayed = later;
        for (_, probe) in due {
            forward(&probe, &mut held_for);
        }
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(_) => continue,
        };
        let datagram = buf[..len].to_vec();
        if from == server {
            if let Some(client) = client {
                socket.send_to(&datagram, client).unwrap();
            }
            continue;
        }
        client = Some(from);
        if let Some(inject) = inject.take() {
            inject(&socket, from, &datagram);
        }
        match rule(seq_of(&datagram)) {
            Act::Forward => forward(&datagram, &mut held_for),
            Act::Drop => {}
            Act::Duplicate => {
                forward(&datagram, &mut held_for);
                socket.send_to(&datagram, server).unwrap();
            }
            Act::After(seq) => held_for.push((seq, datagram)),
            Act::Delay(d) => delayed.push((Instant::now() + d, datagram)),
        }
    }
}

#[test]
fn ping_through_a_lossy_relay_reports_exactly_what_happened() {
    let server = Server::echo("127.0.0.1:0");
    // 20 probes: drop #3 and #7, duplicate #5, swap #10/#11, and hold #15 back until #18 has
    // gone through (a delay past three later probes).
    let relay = Relay::start(
        server.addr,
        |seq| match seq {
            3 | 7 => Act::Drop,
            5 => Act::Duplicate,
            10 => Act::After(11),
            15 => Act::After(18),
            _ => Act::Forward,
        },
        None,
    );
    let (s, done) = ping_json(
        relay.addr,
        &["--count", "20", "--interval", "20", "--timeout", "1000"],
    );
    let forwarded = relay.finish();
    assert!(done.status.success(), "{}", done.stderr);
    // The relay did what it was told...
    assert_eq!(
        forwarded,
        [
            1, 2, 4, 5, 6, 8, 9, 11, 10, 12, 13, 14, 16, 17, 18, 15, 19, 20
        ]
    );
    // ...and ping reports exactly that: #10 after #11 and #15 after #18 are two reorderings.
    assert_eq!(
        counts(
            &s,
            &[
                "sent",
                "received",
                "lost",
                "duplicates",
                "reordered",
                "late",
                "foreign",
                "malformed"
            ]
        ),
        [20, 18, 2, 1, 2, 0, 0, 0],
        "{s}"
    );
    assert_eq!(s["loss_percent"], 10.0);
}

#[test]
fn ping_counts_an_echo_after_its_timeout_as_late_and_lost() {
    let server = Server::echo("127.0.0.1:0");
    // #2 leaves at ~50 ms and comes back at ~850 ms: past its 400 ms timeout, but well
    // before the run ends (last probe at ~950 ms + 400 ms).
    let relay = Relay::start(
        server.addr,
        |seq| match seq {
            2 => Act::Delay(Duration::from_millis(800)),
            _ => Act::Forward,
        },
        None,
    );
    let (s, done) = ping_json(
        relay.addr,
        &["--count", "20", "--interval", "50", "--timeout", "400"],
    );
    relay.finish();
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        counts(
            &s,
            &[
                "sent",
                "received",
                "lost",
                "late",
                "duplicates",
                "reordered"
            ]
        ),
        [20, 19, 1, 1, 0, 0],
        "{s}"
    );
    assert_eq!(s["loss_percent"], 5.0);
}

#[test]
fn ping_counts_and_ignores_malformed_and_foreign_datagrams() {
    let server = Server::echo("127.0.0.1:0");
    let inject: Inject = Box::new(|relay: &UdpSocket, client: SocketAddr, first: &[u8]| {
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let session = u64::from_be_bytes(first[8..16].try_into().unwrap());
        let probe = |session, seq| {
            ferry_udp::probe::encode(
                &ferry_udp::probe::Probe {
                    session,
                    seq,
                    sent_ns: 0,
                },
                64,
            )
            .unwrap()
        };
        let mut upper = first.to_vec();
        upper.make_ascii_uppercase();
        let mut flipped = first.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        let malformed: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"hello".to_vec(),
            vec![0xab; 200],
            upper,
            flipped,
            // Our session, a sequence number never sent.
            probe(session, 999),
            vec![b'f'; 65_507],
        ];
        for datagram in &malformed {
            relay.send_to(datagram, client).unwrap();
        }
        // Probes of other runs, one from the relay's address, one from elsewhere.
        relay.send_to(&probe(session ^ 1, 1), client).unwrap();
        stranger.send_to(&probe(session ^ 2, 2), client).unwrap();
    });
    let relay = Relay::start(server.addr, |_| Act::Forward, Some(inject));
    let (s, done) = ping_json(relay.addr, &["--count", "10", "--interval", "20"]);
    relay.finish();
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        counts(
            &s,
            &[
                "sent",
                "received",
                "lost",
                "duplicates",
                "foreign",
                "malformed",
                "upper_cased"
            ]
        ),
        [10, 10, 0, 0, 2, 7, 1],
        "{s}"
    );
    // Ignored datagrams are told about on stderr, never on stdout's JSON.
    assert_eq!(done.stderr.matches("ignored").count(), 9, "{}", done.stderr);
}

#[test]
fn ping_survives_a_flood_of_junk_and_keeps_stderr_short() {
    let server = Server::echo("127.0.0.1:0");
    let inject: Inject = Box::new(|relay: &UdpSocket, client: SocketAddr, _: &[u8]| {
        // Deterministic junk of sizes 0..200, including some starting with the magic.
        let mut x: u32 = 0x1234_5678;
        for i in 0..500u32 {
            let mut junk: Vec<u8> = (0..i % 200)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            if i % 3 == 0 && junk.len() >= 4 {
                junk[..4].copy_from_slice(b"fry\x01");
            }
            relay.send_to(&junk, client).unwrap();
        }
    });
    let relay = Relay::start(server.addr, |_| Act::Forward, Some(inject));
    let (s, done) = ping_json(relay.addr, &["--count", "10", "--interval", "20"]);
    relay.finish();
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(
        counts(&s, &["sent", "received", "foreign", "malformed"]),
        [10, 10, 0, 500],
        "{s}"
    );
    assert_eq!(done.stderr.matches("ignored malformed").count(), 10);
    assert!(
        done.stderr
            .contains("further ignored datagrams are counted, not shown")
    );
}
