//! Rooms: creation, the roles' rules, member pages.

use chat_protocol::{MembershipChange, RoomInfo};

use super::*;

fn room_action(user: u64, request: u32, action: RoomAction) -> Input {
    Input::Room {
        origin: origin(user, request),
        action,
    }
}

/// Applies a room action, commits it, and returns its answer.
fn act(world: &mut World, user: u64, action: RoomAction) -> (Answer, Vec<Effect>) {
    let out = world.input(ROOM, room_action(user, 1, action));
    if let [(_, answer)] = &answers(&out)[..] {
        return (answer.clone(), out);
    }
    assert_eq!(commits(&out).len(), 1, "{out:?}");
    let out = world.committed(ROOM);
    let answer = answers(&out)
        .first()
        .expect("answered once committed")
        .1
        .clone();
    (answer, out)
}

#[test]
fn a_room_is_created_with_its_owner_and_its_name_claimed() {
    let mut world = World::new();
    let create = Input::Create {
        origin: origin(1, 1),
        name: "lobby".into(),
        invite_only: true,
    };
    let out = world.input(ROOM, create);
    let batch = commits(&out)[0];
    assert_eq!(
        batch.unless_exists,
        Some((Cf::RoomNames, b"lobby".to_vec()))
    );
    assert!(matches!(
        &logged(batch)[..],
        [Entry::Membership(m)] if m.seq == Seq(1) && matches!(m.change, MembershipChange::Created { .. })
    ));
    let out = world.committed(ROOM);
    let info = RoomInfo {
        room: RoomId(77),
        name: "lobby".into(),
        invite_only: true,
        owner: UserId(1),
        members: 1,
    };
    assert_eq!(answers(&out), [(1, Ok(Response::Room(info)))]);
    assert_eq!(published(&out)[0].1, [1]);
}

#[test]
fn a_room_whose_name_is_taken_is_refused_and_forgotten() {
    let mut world = World::new();
    let create = Input::Create {
        origin: origin(1, 1),
        name: "lobby".into(),
        invite_only: false,
    };
    world.input(ROOM, create);
    let out = world.input(ROOM, Input::Committed(Err(WriteError::Exists)));
    assert_eq!(refusals(&out), [(1, ErrorCode::ROOM_NAME_TAKEN)]);
    assert_eq!(world.conversations.len(), 0);
}

#[test]
fn a_room_created_while_it_was_loading_takes_the_inputs_after_its_creation() {
    let mut world = World::new();
    // A join for the next room id arrives before its creation: both wait for the load.
    assert!(matches!(
        world.input(ROOM, room_action(2, 1, RoomAction::Join))[..],
        [Effect::Load(_)]
    ));
    let create = Input::Create {
        origin: origin(1, 2),
        name: "new".into(),
        invite_only: false,
    };
    assert!(world.input(ROOM, create).is_empty());
    assert!(
        world
            .input(ROOM, room_action(3, 3, RoomAction::Join))
            .is_empty()
    );
    let out = world.loaded(ROOM, None);
    assert_eq!(refusals(&out), [(1, ErrorCode::UNKNOWN_ROOM)]);
    assert_eq!(commits(&out).len(), 1, "the creation");
    let out = world.committed(ROOM);
    assert_eq!(answers(&out).len(), 1, "the creation is answered");
    let out = world.committed(ROOM);
    assert!(matches!(&answers(&out)[..], [(3, Ok(Response::Room(info)))] if info.members == 2));
}

#[test]
fn membership_follows_the_roles() {
    use MemberState::Member;
    let mut world = World::new();
    world.ready(
        ROOM,
        1,
        room(
            "r",
            true,
            &[(1, Member(Role::Owner)), (2, Member(Role::Member))],
        ),
    );
    let refused = |answer: Answer| answer.err().map(|r| r.code);

    assert_eq!(
        refused(act(&mut world, 3, RoomAction::Join).0),
        Some(ErrorCode::INVITE_REQUIRED)
    );
    assert_eq!(
        refused(act(&mut world, 2, RoomAction::Invite(UserId(3))).0),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        refused(act(&mut world, 3, RoomAction::Invite(UserId(4))).0),
        Some(ErrorCode::NOT_MEMBER)
    );
    let (answer, out) = act(&mut world, 1, RoomAction::Invite(UserId(3)));
    assert_eq!(answer, Ok(Response::Ok));
    assert_eq!(
        published(&out)[0].1,
        [1, 2, 3],
        "the invited user hears of it"
    );
    // Inviting again changes nothing and logs nothing.
    let out = world.input(ROOM, room_action(1, 1, RoomAction::Invite(UserId(3))));
    assert_eq!(answers(&out), [(1, Ok(Response::Ok))]);
    assert!(commits(&out).is_empty());
    assert!(
        matches!(act(&mut world, 3, RoomAction::Join).0, Ok(Response::Room(info)) if info.members == 3)
    );

    assert_eq!(
        refused(act(&mut world, 2, RoomAction::Kick(UserId(3))).0),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        refused(act(&mut world, 1, RoomAction::Leave).0),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        refused(act(&mut world, 1, RoomAction::SetRole(UserId(1), Role::Admin)).0),
        Some(ErrorCode::INVALID_REQUEST)
    );

    // Handing the room over logs two entries and answers once.
    let out = world.input(
        ROOM,
        room_action(1, 9, RoomAction::SetRole(UserId(2), Role::Owner)),
    );
    let changes: Vec<_> = logged(commits(&out)[0])
        .into_iter()
        .map(|e| match e {
            Entry::Membership(m) => (m.subject.0, m.change),
            other => panic!("not a membership entry: {other:?}"),
        })
        .collect();
    assert_eq!(
        changes,
        [
            (2, MembershipChange::RoleChanged(Role::Owner)),
            (1, MembershipChange::RoleChanged(Role::Admin))
        ]
    );
    assert_eq!(answers(&world.committed(ROOM)), [(9, Ok(Response::Ok))]);
    // The former owner, now an admin, cannot touch the new owner, but can ban a member.
    assert_eq!(
        refused(act(&mut world, 1, RoomAction::Kick(UserId(2))).0),
        Some(ErrorCode::FORBIDDEN)
    );
    let (answer, out) = act(&mut world, 1, RoomAction::Ban(UserId(3)));
    assert_eq!(answer, Ok(Response::Ok));
    assert_eq!(
        published(&out)[0].1,
        [1, 2, 3],
        "the banned user hears of it"
    );
    assert_eq!(
        refused(act(&mut world, 3, RoomAction::Join).0),
        Some(ErrorCode::BANNED)
    );
    assert_eq!(
        refused(act(&mut world, 3, RoomAction::Leave).0),
        Some(ErrorCode::NOT_MEMBER)
    );
    assert_eq!(
        act(&mut world, 1, RoomAction::Unban(UserId(3))).0,
        Ok(Response::Ok)
    );
    assert_eq!(
        refused(act(&mut world, 1, RoomAction::Unban(UserId(3))).0),
        Some(ErrorCode::INVALID_REQUEST)
    );
    assert!(matches!(
        act(&mut world, 1, RoomAction::Info).0,
        Ok(Response::Room(info)) if info.owner == UserId(2) && info.members == 2
    ));
}

#[test]
fn a_full_room_refuses_joins_and_members_are_paged() {
    use MemberState::Member;
    let mut world = World::new();
    world.max_room_members = 2;
    world.ready(ROOM, 1, room("r", false, &[(1, Member(Role::Owner))]));
    assert!(act(&mut world, 5, RoomAction::Join).0.is_ok());
    assert_eq!(
        act(&mut world, 6, RoomAction::Join).0.err().map(|r| r.code),
        Some(ErrorCode::ROOM_FULL)
    );
    let out = world.input(
        ROOM,
        room_action(
            1,
            1,
            RoomAction::Members {
                after: None,
                limit: 1,
            },
        ),
    );
    assert!(matches!(
        &out[..],
        [Effect::ReadMembers { page, next: Some(UserId(1)), .. }] if page[..] == [(UserId(1), Role::Owner)]
    ));
    let out = world.input(
        ROOM,
        room_action(
            1,
            1,
            RoomAction::Members {
                after: Some(UserId(1)),
                limit: 5,
            },
        ),
    );
    assert!(matches!(
        &out[..],
        [Effect::ReadMembers { page, next: None, .. }] if page[..] == [(UserId(5), Role::Member)]
    ));
}

#[test]
fn admins_act_only_on_those_they_outrank() {
    use MemberState::Member;
    let mut world = World::new();
    let people = [
        (1, Member(Role::Owner)),
        (2, Member(Role::Admin)),
        (3, Member(Role::Admin)),
        (4, Member(Role::Member)),
    ];
    world.ready(ROOM, 1, room("r", false, &people));
    let code = |answer: Answer| answer.err().map(|r| r.code);
    assert_eq!(
        code(act(&mut world, 2, RoomAction::Kick(UserId(3))).0),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        code(act(&mut world, 2, RoomAction::Ban(UserId(3))).0),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        code(act(&mut world, 2, RoomAction::Kick(UserId(2))).0),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        act(&mut world, 2, RoomAction::Kick(UserId(4))).0,
        Ok(Response::Ok)
    );
    assert_eq!(
        code(act(&mut world, 2, RoomAction::Kick(UserId(4))).0),
        Some(ErrorCode::NOT_MEMBER)
    );
    assert_eq!(
        act(&mut world, 1, RoomAction::Ban(UserId(3))).0,
        Ok(Response::Ok)
    );
    assert_eq!(
        code(act(&mut world, 2, RoomAction::Unban(UserId(3))).0),
        Some(ErrorCode::FORBIDDEN)
    );
    assert_eq!(
        act(&mut world, 1, RoomAction::Unban(UserId(3))).0,
        Ok(Response::Ok)
    );
    assert_eq!(
        code(act(&mut world, 2, RoomAction::SetRole(UserId(1), Role::Member)).0),
        Some(ErrorCode::FORBIDDEN)
    );
}
