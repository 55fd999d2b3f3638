//! Property tests: every message type round-trips, and no input makes decoding panic.

use proptest::prelude::*;

use crate::codec;
use crate::*;

const LIMIT: usize = limits::MAX_SERVER_FRAME;

/// Encodes and decodes a value of every listed type through the body codec, and checks
/// that every strict prefix of the encoding fails to decode (a body never "ends early").
macro_rules! round_trip {
    ($($name:ident: $ty:ty),+ $(,)?) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            $(
                #[test]
                fn $name(value in any::<$ty>()) {
                    let mut bytes = Vec::new();
                    codec::encode_into(&value, &mut bytes).unwrap();
                    let back = codec::decode_value::<$ty, LIMIT>(&bytes).unwrap();
                    prop_assert_eq!(&back, &value);
                    for cut in 0..bytes.len() {
                        prop_assert!(
                            codec::decode_value::<$ty, LIMIT>(&bytes[..cut]).is_err(),
                            "a {}-byte prefix of {} bytes decoded", cut, bytes.len()
                        );
                    }
                }
            )+
        }
    };
}

round_trip! {
    user_id: UserId, device_id: DeviceId, room_id: RoomId, seq: Seq, op_id: OpId,
    request_id: RequestId, timestamp: Timestamp, conversation_id: ConversationId,
    error_code: ErrorCode, goodbye_code: GoodbyeCode,
    client_frame: ClientFrame, hello: Hello, version_range: VersionRange, auth: Auth,
    resume: Resume, cursor: Cursor, user_ref: UserRef, role: Role, marker: Marker,
    content_type: ContentType, send_message: SendMessage, history_from: HistoryFrom,
    order: Order, history_query: HistoryQuery, typing_update: TypingUpdate, request: Request,
    server_frame: ServerFrame, hello_ok: HelloOk, session: Session, limits_: Limits,
    error_body: ErrorBody, goodbye: Goodbye, response: Response, token_grant: TokenGrant,
    user_info: UserInfo, room_info: RoomInfo, member: Member, member_page: MemberPage,
    conversation_summary: ConversationSummary, conversation_page: ConversationPage,
    send_ack: SendAck, history_page: HistoryPage, entry: Entry, message: Message,
    membership_event: MembershipEvent, membership_change: MembershipChange, receipt: Receipt,
    presence_status: PresenceStatus, presence_info: PresenceInfo, typing_event: TypingEvent,
    gap: Gap, event: Event, react_message: ReactMessage, reaction: Reaction,
    reactions: Reactions,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn client_frames_round_trip_through_framing(frame in any::<ClientFrame>()) {
        let bytes = encode_frame_to_vec(&frame).unwrap();
        prop_assert_eq!(frame_size::<ClientFrame>(&bytes).unwrap(), bytes.len());
        prop_assert_eq!(decode_frame::<ClientFrame>(&bytes).unwrap(), (frame.clone(), bytes.len()));
        prop_assert_eq!(decode_datagram::<ClientFrame>(&bytes).unwrap(), frame);
        for cut in [0, 1, 4, 5, bytes.len() - 1] {
            let err = decode_frame::<ClientFrame>(&bytes[..cut]).unwrap_err();
            prop_assert!(err.is_incomplete(), "cut {} gave {:?}", cut, err);
        }
    }

    #[test]
    fn server_frames_round_trip_through_a_stream(frames in prop::collection::vec(any::<ServerFrame>(), 1..8), chunk in 1usize..512) {
        let mut stream = Vec::new();
        for frame in &frames {
            encode_frame(frame, &mut stream).unwrap();
        }
        let mut decoder = FrameDecoder::<ServerFrame>::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.push(piece).unwrap();
            while let Some(frame) = decoder.next_frame().unwrap() {
                got.push(frame);
            }
        }
        prop_assert_eq!(got, frames);
    }

    /// Random bytes: never a panic, and a success must re-encode to an equal value.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok((value, _)) = decode_frame::<ClientFrame>(&bytes) {
            let again = encode_frame_to_vec(&value).unwrap();
            prop_assert_eq!(decode_frame::<ClientFrame>(&again).unwrap().0, value);
        }
        if let Ok((value, _)) = decode_frame::<ServerFrame>(&bytes) {
            let again = encode_frame_to_vec(&value).unwrap();
            prop_assert_eq!(decode_frame::<ServerFrame>(&again).unwrap().0, value);
        }
        if let Ok(value) = decode_datagram::<ClientFrame>(&bytes) {
            let again = encode_frame_to_vec(&value).unwrap();
            prop_assert_eq!(decode_datagram::<ClientFrame>(&again).unwrap(), value);
        }
    }

    /// Random bodies behind a valid header reach the bincode decoder itself.
    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut frame = u32::try_from(body.len() + 1).unwrap().to_le_bytes().to_vec();
        frame.push(PROTOCOL_VERSION);
        frame.extend_from_slice(&body);
        match decode_frame::<ClientFrame>(&frame) {
            Ok((value, used)) => {
                prop_assert_eq!(used, frame.len());
                let again = encode_frame_to_vec(&value).unwrap();
                prop_assert_eq!(decode_frame::<ClientFrame>(&again).unwrap().0, value);
            }
            Err(e) => prop_assert!(!e.is_incomplete(), "a complete frame is never incomplete: {:?}", e),
        }
        let _ = decode_frame::<ServerFrame>(&frame);
    }
}
