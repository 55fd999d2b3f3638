//! The outbox records' JSON form, routing keys and binary form.

use super::*;

#[test]
fn binary_bodies_are_base64_and_text_is_text() {
    let binary = MessageBody::new(Seq(1), UserId(1), 1, ContentType(100), None, b"foobar");
    assert_eq!(
        (binary.text, binary.body_base64.as_deref()),
        (None, Some("Zm9vYmFy"))
    );
    let text = MessageBody::new(Seq(1), UserId(1), 1, ContentType::TEXT, None, b"hi");
    assert_eq!((text.text.as_deref(), text.body_base64), (Some("hi"), None));
}

#[test]
fn records_serialize_flat_with_their_type() {
    let record = Record {
        seq: 7,
        ts: Timestamp(1_795_000_000_000),
        event: Event::MessageCreated {
            conversation: ConversationId::Room(chat_protocol::RoomId(5)).into(),
            message: MessageBody::new(Seq(43), UserId(1), 77, ContentType::TEXT, None, b"hello"),
            offline_recipients: vec![UserId(2)],
            mentions: vec![UserId(3)],
        },
    };
    let json = serde_json::to_value(&record).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "seq": 7, "ts": 1_795_000_000_000u64, "type": "message.created",
            "conversation": { "kind": "room", "room": 5 },
            "message": { "seq": 43, "sender": 1, "op": "77", "content_type": 0,
                         "reply_to": null, "text": "hello" },
            "offline_recipients": [2], "mentions": [3]
        })
    );
    assert_eq!(record.event.routing_key(), "message.created.room");
    let back: Record = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, record);
    // A record stored before mentions existed reads as mentioning no one.
    let mut older = json;
    older.as_object_mut().unwrap().remove("mentions");
    let older: Record = serde_json::from_value(older).unwrap();
    assert!(
        matches!(older.event, Event::MessageCreated { ref mentions, .. } if mentions.is_empty())
    );
}

#[test]
fn records_convert_to_the_binary_form_with_nothing_lost() {
    let record = |event| Record {
        seq: 3,
        ts: Timestamp(1_795_000_000_000),
        event,
    };
    let direct = ConversationId::direct(UserId(9), UserId(2));
    let binary = record(Event::MessageCreated {
        conversation: direct.into(),
        message: MessageBody::new(
            Seq(4),
            UserId(9),
            u64::MAX,
            ContentType(100),
            Some(Seq(2)),
            &[0, 255, 7],
        ),
        offline_recipients: vec![UserId(2)],
        mentions: vec![UserId(2), UserId(9)],
    });
    assert_eq!(
        binary.to_binary().unwrap(),
        events::EventRecord {
            seq: 3,
            ts: Timestamp(1_795_000_000_000),
            event: events::EventKind::MessageCreated {
                conversation: direct,
                seq: Seq(4),
                sender: UserId(9),
                op: OpId(u64::MAX),
                content_type: ContentType(100),
                reply_to: Some(Seq(2)),
                body: vec![0, 255, 7],
                offline_recipients: vec![UserId(2)],
                mentions: vec![UserId(2), UserId(9)],
            },
        }
    );
    let text = record(Event::MessageCreated {
        conversation: ConversationId::Notes(UserId(9)).into(),
        message: MessageBody::new(Seq(1), UserId(9), 5, ContentType::TEXT, None, b"hi"),
        offline_recipients: vec![],
        mentions: vec![],
    });
    assert!(matches!(
        text.to_binary().unwrap().event,
        events::EventKind::MessageCreated { ref body, .. } if body == b"hi"
    ));
    let role = record(Event::MembershipChanged {
        conversation: ConversationId::Room(chat_protocol::RoomId(1)).into(),
        entry_seq: Seq(5),
        actor: UserId(1),
        subject: UserId(2),
        change: (&MembershipChange::RoleChanged(Role::Admin)).into(),
    });
    assert!(matches!(
        role.to_binary().unwrap().event,
        events::EventKind::MembershipChanged {
            change: events::Change::RoleChanged(Role::Admin),
            ..
        }
    ));
    let marker = record(Event::MarkerMoved {
        conversation: direct.into(),
        user: UserId(2),
        marker: Marker::Read.into(),
        up_to: Seq(4),
    });
    assert!(matches!(
        marker.to_binary().unwrap().event,
        events::EventKind::MarkerMoved {
            marker: Marker::Read,
            ..
        }
    ));
    let edited = record(Event::MessageEdited {
        conversation: direct.into(),
        edit: MessageBody::new(Seq(6), UserId(9), 11, ContentType::TEXT, None, b"fixed"),
        target: Seq(4),
    });
    assert_eq!(edited.event.routing_key(), "message.edited.direct");
    assert_eq!(
        edited.to_binary().unwrap().event,
        events::EventKind::MessageEdited {
            conversation: direct,
            seq: Seq(6),
            target: Seq(4),
            sender: UserId(9),
            op: OpId(11),
            content_type: ContentType::TEXT,
            body: b"fixed".to_vec(),
        }
    );
    let deleted = record(Event::MessageDeleted {
        conversation: direct.into(),
        entry_seq: Seq(7),
        target: Seq(4),
        actor: UserId(9),
        author: UserId(9),
        op: u64::MAX.to_string(),
        erased: vec![Seq(6)],
    });
    assert_eq!(deleted.event.routing_key(), "message.deleted.direct");
    assert_eq!(
        deleted.to_binary().unwrap().event,
        events::EventKind::MessageDeleted {
            conversation: direct,
            seq: Seq(7),
            target: Seq(4),
            actor: UserId(9),
            author: UserId(9),
            op: OpId(u64::MAX),
            erased: vec![Seq(6)],
        }
    );
    let reacted = record(Event::MessageReacted {
        conversation: direct.into(),
        entry_seq: Seq(8),
        target: Seq(4),
        user: UserId(2),
        op: "12".into(),
        reaction: "👍".into(),
        removed: true,
    });
    assert_eq!(reacted.event.routing_key(), "message.reacted.direct");
    assert_eq!(
        reacted.to_binary().unwrap().event,
        events::EventKind::MessageReacted {
            conversation: direct,
            seq: Seq(8),
            target: Seq(4),
            user: UserId(2),
            op: OpId(12),
            reaction: "👍".into(),
            removed: true,
        }
    );
    // A record this daemon would not write is refused, not guessed at.
    let reversed = record(Event::MarkerMoved {
        conversation: Conversation::Direct {
            users: [UserId(9), UserId(2)],
        },
        user: UserId(2),
        marker: MarkerKind::Read,
        up_to: Seq(4),
    });
    assert!(reversed.to_binary().is_err());
}
