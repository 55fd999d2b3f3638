//! Codec cost of the two frames that dominate chatd's traffic: a 100-byte chat message as
//! fanned out (`ServerFrame::Event(Message)`), and a history page of 100 such messages.
//!
//! Each group also times the baseline every codec pays: copying the same number of bytes
//! into a reused buffer. `bench/codec.sh` runs this and reports codec / copy ratios, which
//! stay comparable across machines where absolute times do not.
//!
//! Run: `cargo bench -p chat-bench --bench codec` (or `bench/codec.sh` for the table).

#![allow(missing_docs)] // criterion_group! generates undocumented functions
#![allow(clippy::expect_used)] // the frames are fixtures built here, not network input

use std::hint::black_box;

use chat_bench::{history_page, message_event};
use chat_protocol::{ServerFrame, decode_frame, encode_frame, encode_frame_to_vec};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench_frame(c: &mut Criterion, group_name: &str, frame: &ServerFrame) {
    let bytes = encode_frame_to_vec(frame).expect("benchmark frame encodes");
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Bytes(bytes.len() as u64));

    let mut out = Vec::with_capacity(bytes.len());
    group.bench_function("copy_baseline", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&bytes));
            black_box(&out);
        });
    });
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(black_box(frame), &mut out).expect("encodes");
            black_box(&out);
        });
    });
    group.bench_function("decode", |b| {
        b.iter(|| black_box(decode_frame::<ServerFrame>(black_box(&bytes)).expect("decodes")));
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_frame(c, "message_100B", &message_event(42));
    bench_frame(c, "history_page_100", &history_page(100));
}

criterion_group!(benches, codec);
criterion_main!(benches);
