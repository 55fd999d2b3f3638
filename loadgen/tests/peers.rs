//! Short loadgen runs against the brokers chatd is compared with, each a real process on a
//! free loopback port started by the test: nats-server (core, and JetStream on a file store)
//! and Mosquitto (MQTT 5, QoS 0 and 1). The checker must find every acknowledged message of
//! every sender delivered once, in the sender's order, to every fellow member; and a broker
//! that goes away mid-run must fail the run. The assertions are about correctness and counts,
//! never about timing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_loadgen::{Options, Summary, run};
use clap::Parser as _;

/// A broker process, killed when dropped.
struct Broker {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

/// `name` from PATH or the sbin directories Debian installs daemons in.
fn binary(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (`make test` installs it)"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Broker {
    /// nats-server on a free port; with JetStream on a file store in a temp dir.
    fn nats(jetstream: bool) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!("listen: 127.0.0.1:{port}\n");
        if jetstream {
            config += &format!("jetstream {{ store_dir: {:?} }}\n", dir.path().join("js"));
        }
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).unwrap();
        Broker::start(
            Command::new(binary("nats-server")).arg("-c").arg(&file),
            port,
            dir,
        )
    }

    /// Mosquitto on a free port, anonymous, nothing persisted.
    fn mosquitto() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let file = dir.path().join("mosquitto.conf");
        let config =
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n");
        std::fs::write(&file, config).unwrap();
        Broker::start(
            Command::new(binary("mosquitto")).arg("-c").arg(&file),
            port,
            dir,
        )
    }

    fn start(command: &mut Command, port: u16, dir: tempfile::TempDir) -> Broker {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut broker = Broker {
            child,
            address,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(address).is_err() {
            assert!(
                broker.child.try_wait().unwrap().is_none(),
                "the broker exited at start"
            );
            assert!(Instant::now() < deadline, "the broker did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn options(&self, args: &str) -> Options {
        let address = self.address.to_string();
        let mut argv = vec!["chat-loadgen"];
        argv.extend(args.split_whitespace());
        argv.extend(["--server", &address, "--quiet"]);
        Options::parse_from(argv)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

const ROOMS: &str =
    "rooms --clients 20 --room-size 5 --rate 200 --ramp-up 0.5 --warm-up 0.5 --duration 2";

async fn load(broker: &Broker, args: &str) -> Summary {
    let summary = run(broker.options(args)).await.unwrap();
    println!("{}", summary.table());
    summary
}

/// A correct run: nothing lost, repeated or out of its sender's order, and not empty.
fn assert_correct(summary: &Summary, confirmed: bool) {
    let step = &summary.steps[0];
    let check = step.check.unwrap();
    assert!(summary.correct, "{check:?}");
    assert_eq!(
        (check.lost, check.duplicated, check.reordered, check.gaps),
        (0, 0, 0, 0)
    );
    // 200/s for 2.5 s schedules 500 sends, each expected at its 5 members (the sender
    // through its ack); how many the machine managed is a benchmark's business.
    assert!(check.expected >= 5 * 20, "{check:?}");
    assert_eq!(check.delivered, check.expected);
    assert_eq!(check.unexpected, 0);
    assert_eq!(step.echoed, 0, "a sender got its own message back");
    assert_eq!(step.refused + step.disconnects + step.corrupted, 0);
    assert!(step.sustainable, "{:?}", step.limited_by);
    // Each measured send reached the 4 other members; only confirmed publishes (JetStream,
    // QoS 1) have an ack to time.
    assert!(step.send_to_delivery.count > 0);
    assert_eq!(step.send_to_delivery.count % 4, 0);
    if confirmed {
        assert_eq!(step.send_to_delivery.count, 4 * step.send_to_ack.count);
    } else {
        assert_eq!(step.send_to_ack.count, 0);
    }
}

#[tokio::test]
async fn nats_core_rooms_are_checked_per_sender() {
    let broker = Broker::nats(false);
    assert_correct(
        &load(&broker, &format!("{ROOMS} --target nats")).await,
        false,
    );
}

#[tokio::test]
async fn jetstream_acks_every_publish_and_members_get_each_once() {
    let broker = Broker::nats(true);
    assert_correct(
        &load(&broker, &format!("{ROOMS} --target jetstream")).await,
        true,
    );
}

#[tokio::test]
async fn mqtt_qos0_rooms_are_checked_per_sender() {
    let broker = Broker::mosquitto();
    assert_correct(
        &load(&broker, &format!("{ROOMS} --target mqtt --qos 0")).await,
        false,
    );
}

#[tokio::test]
async fn mqtt_qos1_pubacks_are_acks() {
    let broker = Broker::mosquitto();
    let summary = load(&broker, &format!("{ROOMS} --target mqtt --qos 1")).await;
    assert_correct(&summary, true);
    let step = &summary.steps[0];
    // Every send scheduled in the window was acknowledged by a PUBACK.
    assert_eq!(step.unanswered, 0);
}

#[tokio::test]
async fn direct_messages_against_a_peer() {
    let broker = Broker::nats(false);
    let summary = load(
        &broker,
        "dm --clients 10 --rate 100 --ramp-up 0.2 --warm-up 0.2 --duration 1 --target nats",
    )
    .await;
    let check = summary.steps[0].check.unwrap();
    assert!(summary.correct, "{check:?}");
    assert_eq!(summary.conversations, 5);
    assert!(check.expected >= 2 * 10, "{check:?}");
    assert_eq!(check.delivered, check.expected);
}

#[tokio::test]
async fn a_broker_that_goes_away_fails_the_run() {
    let mut broker = Broker::nats(false);
    let options = broker.options(
        "rooms --clients 10 --room-size 5 --rate 200 --ramp-up 0.2 --warm-up 0.2 --duration 3 \
         --drain 2 --target nats",
    );
    let running = tokio::spawn(run(options));
    // Well inside the measured window (it starts after the ramp-up, the setup and the
    // warm-up, about half a second in, and lasts 3 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    broker.kill();
    let summary = running.await.unwrap().unwrap();
    println!("{}", summary.table());
    let step = &summary.steps[0];
    assert!(step.disconnects > 0, "no lost connection was counted");
    assert!(!step.sustainable);
    // What the clients published while the broker was gone never arrived.
    assert!(!summary.correct);
    assert!(step.check.unwrap().lost > 0);
}

#[test]
fn the_peers_refuse_churn_and_short_bodies() {
    let parse = |args: &str| {
        Options::try_from_args(std::iter::once("chat-loadgen").chain(args.split_whitespace()))
            .unwrap()
            .validate()
    };
    assert!(parse("churn --target nats").is_err());
    assert!(parse("rooms --target mqtt --size 19").is_err());
    assert!(parse("rooms --target mqtt --size 20").is_ok());
}
