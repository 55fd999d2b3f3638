//! Rendering, resident memory and request kind names.

use super::*;

#[test]
fn counts_render_as_prometheus_text() {
    let metrics = Arc::new(Metrics::new(2));
    metrics.shards[1].deliveries.increment(3);
    metrics.shards[0].requests[request_kind(&Request::Ping)].increment(1);
    enter(&metrics);
    count_error(ErrorCode::NOT_MEMBER);
    count_error(ErrorCode(4242));
    seconds(&metrics.storage.commit_seconds, Duration::from_millis(3));
    metrics.upkeep();
    let text = metrics.render();
    assert!(
        text.contains("chatd_deliveries_total{shard=\"1\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("chatd_deliveries_total{shard=\"0\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("chatd_requests_total{shard=\"0\",request=\"ping\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("chatd_errors_total{code=\"NOT_MEMBER\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("chatd_errors_total{code=\"OTHER\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("chatd_storage_commit_seconds_bucket{le=\"0.005\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("chatd_storage_commit_seconds_bucket{le=\"0.0025\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE chatd_storage_commit_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("chatd_build_info{version="), "{text}");
}

#[test]
fn cluster_lags_are_counted_by_reason() {
    let metrics = Metrics::new(1);
    metrics.peer_lag(PeerLag::View);
    metrics.peer_lag(PeerLag::View);
    metrics.peer_lag(PeerLag::NewSource);
    let text = metrics.render();
    for (reason, count) in [
        ("link_start", 0),
        ("link_end", 0),
        ("view", 2),
        ("take", 0),
        ("new_source", 1),
    ] {
        let line = format!("chatd_peer_lags_total{{reason=\"{reason}\"}} {count}\n");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

#[test]
fn resident_memory_is_read() {
    let rss = resident_bytes();
    assert!(rss > 1 << 20, "{rss}");
}

#[test]
fn every_request_kind_has_its_own_name() {
    let mut names = REQUESTS.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), REQUESTS.len());
}
