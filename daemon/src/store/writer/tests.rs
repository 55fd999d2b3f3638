//! Group commits, slow-commit and failure reporting of the storage thread.

use super::*;

#[test]
fn slow_commits_are_reported_at_most_once_a_second_with_what_was_missed() {
    let mut slow = SlowWrites::default();
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(slow.record(ms(5), t0), None, "fast commits are not counted");
    assert_eq!(slow.record(ms(60), t0), Some((1, ms(60))));
    assert_eq!(slow.record(ms(200), t0 + ms(100)), None);
    assert_eq!(slow.record(ms(70), t0 + ms(900)), None);
    assert_eq!(slow.record(ms(1), t0 + ms(1500)), None);
    assert_eq!(
        slow.record(ms(55), t0 + ms(1500)),
        Some((3, ms(200))),
        "the report covers every slow commit since the last one"
    );
    assert_eq!(slow.record(ms(80), t0 + ms(2600)), Some((1, ms(80))));
}

#[test]
fn failing_commits_are_reported_first_then_every_ten_seconds_then_once_recovered() {
    let mut failed = FailedWrites::default();
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let full = WriteError::Storage("IO error: No space left on device".into());
    assert_eq!(
        failed.record(None, t0),
        None,
        "nothing to say while writes succeed"
    );
    assert_eq!(
        failed.record(Some(&full), t0),
        Some(FailureReport::First(&full))
    );
    for i in 1..100 {
        assert_eq!(failed.record(Some(&full), t0 + s(9) * i / 100), None);
    }
    assert_eq!(
        failed.record(Some(&full), t0 + s(10)),
        Some(FailureReport::Still {
            failed: 100,
            error: &full
        }),
        "the report counts every failure since the last line"
    );
    assert_eq!(failed.record(Some(&full), t0 + s(12)), None);
    assert_eq!(
        failed.record(None, t0 + s(15)),
        Some(FailureReport::Recovered {
            failed: 102,
            lasted: s(15)
        })
    );
    assert_eq!(failed.record(None, t0 + s(16)), None);
    // A new run starts with a first line again.
    assert_eq!(
        failed.record(Some(&full), t0 + s(17)),
        Some(FailureReport::First(&full))
    );
}
