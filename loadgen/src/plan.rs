//! Who talks to whom: the conversations of a scenario, as groups of client numbers. The
//! conversation ids are assigned at setup (rooms are created, direct conversations follow
//! from the user ids).

use crate::check::ClientId;
use crate::options::{Options, Scenario};

/// One conversation of the scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    /// Every member, the senders included; the first one creates the room.
    pub members: Vec<ClientId>,
    /// The members that send.
    pub senders: Vec<ClientId>,
}

/// The conversations of `options`' scenario over clients `0..options.client_count()`.
pub(crate) fn groups(options: &Options) -> Vec<Group> {
    let clients = u32::try_from(options.client_count()).unwrap_or(u32::MAX);
    let size = u32::try_from(options.room_size).unwrap_or(u32::MAX);
    let rooms = |senders: Option<usize>| -> Vec<Group> {
        (0..clients / size)
            .map(|room| {
                let members: Vec<ClientId> = (room * size..(room + 1) * size).collect();
                let senders = senders.map_or_else(|| members.clone(), |n| members[..n].to_vec());
                Group { members, senders }
            })
            .collect()
    };
    match options.scenario {
        Scenario::Dm => (0..clients / 2)
            .map(|pair| Group {
                members: vec![2 * pair, 2 * pair + 1],
                senders: vec![2 * pair, 2 * pair + 1],
            })
            .collect(),
        Scenario::Rooms | Scenario::Churn => rooms(None),
        Scenario::Fanout => rooms(Some(options.senders)),
        Scenario::Idle => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn options(args: &str) -> Options {
        Options::parse_from(std::iter::once("chat-loadgen").chain(args.split_whitespace()))
    }

    #[test]
    fn dm_pairs_up_clients_and_both_send() {
        let groups = groups(&options("dm --clients 5"));
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1].members, vec![2, 3]);
        assert_eq!(groups[1].senders, vec![2, 3]);
    }

    #[test]
    fn rooms_fill_whole_rooms_and_fanout_has_few_senders() {
        let rooms = groups(&options("rooms --clients 25 --room-size 10"));
        assert_eq!(rooms.len(), 2);
        assert_eq!(rooms[1].members, (10..20).collect::<Vec<_>>());
        assert_eq!(rooms[1].senders.len(), 10);
        let fanout = groups(&options("fanout --rooms 2 --room-size 100 --senders 3"));
        assert_eq!(fanout.len(), 2);
        assert_eq!(fanout[1].members.len(), 100);
        assert_eq!(fanout[1].senders, vec![100, 101, 102]);
        assert!(groups(&options("idle --clients 10")).is_empty());
    }
}
