//! Decoding never allocates more than the decode limit of its direction, whatever the input,
//! and every client frame within the frame limit decodes (collection limits are the
//! daemon's to answer, with a typed error).
//!
//! A counting global allocator records, per thread, the bytes requested while a decode
//! runs. Adversarial inputs (length prefixes inside the body that claim huge containers)
//! and random bodies behind a valid header are decoded, and the total is checked.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use chat_protocol::limits::{MAX_CLIENT_DECODE, MAX_CLIENT_FRAME, MAX_SERVER_FRAME};
use chat_protocol::{
    ClientFrame, ConversationId, Cursor, DecodeError, Frame, PROTOCOL_VERSION, Request, RequestId,
    Resume, RoomId, Seq, ServerFrame, UserId, UserRef, decode_frame, encode_frame_to_vec,
};
use proptest::prelude::*;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static REQUESTED: Cell<usize> = const { Cell::new(0) };
}

fn note(bytes: usize) {
    // `try_with`: the allocator may run while this thread's locals are being torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = REQUESTED.try_with(|r| r.set(r.get() + bytes));
        }
    });
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes requested from the allocator while decoding `bytes` as `F` (error path included,
/// the error's own message excluded since it is bounded and not input-sized).
fn requested_by_decode<F: Frame>(bytes: &[u8]) -> (usize, Result<(), DecodeError>) {
    REQUESTED.with(|r| r.set(0));
    COUNTING.with(|c| c.set(true));
    let result = decode_frame::<F>(bytes).map(|_| ());
    COUNTING.with(|c| c.set(false));
    (REQUESTED.with(Cell::get), result)
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = u32::try_from(body.len() + 1)
        .unwrap()
        .to_le_bytes()
        .to_vec();
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(body);
    frame
}

/// Varint for a u64, as the codec writes it.
fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=250 => vec![u8::try_from(v).unwrap()],
        251..=0xffff => [&[251u8][..], &u16::try_from(v).unwrap().to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[252u8][..], &u32::try_from(v).unwrap().to_le_bytes()].concat(),
        _ => [&[253u8][..], &v.to_le_bytes()].concat(),
    }
}

/// Bodies whose inner length prefixes claim containers of `len` elements, for both
/// directions: a lookup of `len` users, a send with a `len`-byte body, a history page of
/// `len` entries, a user list of `len` users.
fn hostile_bodies(len: u64) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let n = varint(len);
    let client = vec![
        // Request{id 1, LookupUsers(vec of len)}
        [&[1u8, 1, 4][..], &n].concat(),
        // Request{id 1, Send{Room(5), op 1, type 0, reply None, body len}}
        [&[1u8, 1, 16, 2, 5, 1, 0, 0][..], &n].concat(),
        // Hello{versions, client: string of len}
        [&[0u8, 1, 1][..], &n].concat(),
    ];
    let server = vec![
        // Response{id 1, History{Room(5), entries: len}}
        [&[1u8, 1, 9, 2, 5][..], &n].concat(),
        // Response{id 1, Users(len)}
        [&[1u8, 1, 4][..], &n].concat(),
        // Event(Message{.., body len}) with the fixed fields present.
        [&[3u8, 0, 2, 5, 1, 1, 1, 1, 0, 0][..], &n].concat(),
    ];
    (client, server)
}

#[test]
fn hostile_container_lengths_stay_within_the_limit() {
    // The counter works: a 1000-entry lookup is within the limit, so it is allocated.
    let (client, _) = hostile_bodies(1_000);
    assert!(requested_by_decode::<ClientFrame>(&framed(&client[0])).0 >= 1_000);
    for len in [1_000, 60_000, 1 << 20, 1 << 32, u64::MAX >> 1, u64::MAX] {
        let (client, server) = hostile_bodies(len);
        for body in client {
            let (bytes, result) = requested_by_decode::<ClientFrame>(&framed(&body));
            assert!(
                result.is_err(),
                "len {len}: a body without its contents must not decode"
            );
            assert!(
                bytes <= MAX_CLIENT_DECODE,
                "len {len}: client decode allocated {bytes} bytes"
            );
        }
        for body in server {
            let (bytes, result) = requested_by_decode::<ServerFrame>(&framed(&body));
            assert!(result.is_err());
            assert!(
                bytes <= MAX_SERVER_FRAME,
                "len {len}: server decode allocated {bytes} bytes"
            );
        }
    }
}

#[test]
fn oversize_length_prefixes_allocate_nothing() {
    for len in [
        MAX_CLIENT_FRAME + 1,
        MAX_SERVER_FRAME + 1,
        u32::MAX as usize,
    ] {
        let prefix = u32::try_from(len).unwrap().to_le_bytes();
        let (bytes, result) = requested_by_decode::<ServerFrame>(&prefix);
        if len > MAX_SERVER_FRAME {
            assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
            assert_eq!(bytes, 0);
        }
        let (bytes, result) = requested_by_decode::<ClientFrame>(&prefix);
        assert!(matches!(result, Err(DecodeError::TooLarge { .. })));
        assert_eq!(bytes, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bodies_stay_within_the_limit(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let frame = framed(&body);
        let (bytes, _) = requested_by_decode::<ClientFrame>(&frame);
        prop_assert!(bytes <= MAX_CLIENT_DECODE, "client decode allocated {}", bytes);
        let (bytes, _) = requested_by_decode::<ServerFrame>(&frame);
        prop_assert!(bytes <= MAX_SERVER_FRAME, "server decode allocated {}", bytes);
    }
}

#[test]
fn collection_elements_take_at_most_32_bytes_in_memory() {
    // What MAX_CLIENT_DECODE = 32 x MAX_CLIENT_FRAME rests on: each element of a client
    // frame's collections takes at least one byte on the wire and at most this in memory.
    assert!(std::mem::size_of::<Cursor>() <= 32);
    assert!(std::mem::size_of::<UserRef>() <= 32);
    assert!(std::mem::size_of::<UserId>() <= 32);
}

/// The largest `n` for which `make(n)` encodes within the client frame limit.
fn largest_within_the_frame_limit(make: impl Fn(usize) -> ClientFrame) -> (usize, Vec<u8>) {
    let (mut low, mut high) = (1usize, MAX_CLIENT_FRAME);
    while low < high {
        let mid = (low + high).div_ceil(2);
        match encode_frame_to_vec(&make(mid)) {
            Ok(bytes) if bytes.len() <= MAX_CLIENT_FRAME + 4 => low = mid,
            _ => high = mid - 1,
        }
    }
    (low, encode_frame_to_vec(&make(low)).unwrap())
}

#[test]
fn every_client_frame_within_the_frame_limit_decodes() {
    // The smallest elements, as many as fit: far beyond each collection's limit, yet the
    // frame decodes, so the daemon can answer with a typed error and keep the connection.
    let cursors = |n: usize| ClientFrame::Request {
        id: RequestId(1),
        request: Request::Sync(Resume {
            cursors: (0..n)
                .map(|_| Cursor {
                    conversation: ConversationId::Room(RoomId(1)),
                    seq: Seq(1),
                })
                .collect(),
        }),
    };
    let lookups = |n: usize| ClientFrame::Request {
        id: RequestId(1),
        request: Request::LookupUsers((0..n).map(|_| UserRef::Name(String::new())).collect()),
    };
    let presence = |n: usize| ClientFrame::Request {
        id: RequestId(1),
        request: Request::Presence {
            subscribe: vec![UserId(1); n],
            unsubscribe: Vec::new(),
        },
    };
    for (what, make) in [
        ("cursors", &cursors as &dyn Fn(usize) -> ClientFrame),
        ("lookups", &lookups),
        ("presence", &presence),
    ] {
        let (n, bytes) = largest_within_the_frame_limit(make);
        assert!(n > 10_000, "{what}: only {n} fit");
        let (allocated, result) = requested_by_decode::<ClientFrame>(&bytes);
        assert!(result.is_ok(), "{what} x {n}: {result:?}");
        assert!(allocated <= MAX_CLIENT_DECODE, "{what}: {allocated} bytes");
        assert_eq!(decode_frame::<ClientFrame>(&bytes).unwrap().0, make(n));
    }
}
