//! The membership plan of a `DatabaseCluster`'s group: which single change to make next so
//! that the members follow `spec.replicas` without the group ever losing its majority.
//!
//! Node ids follow the StatefulSet's ordinals (pod `<name>-<n>` is node `n + 1`), so the
//! wanted group is nodes `1..=replicas`. One change at a time, in this order:
//! 1. a member that lost its data (its storage is not the one it joined with, so it has
//!    forgotten its votes) leaves, as in 4., to join afresh by 3.;
//! 2. a learner among the wanted that has caught up is promoted to voter;
//! 3. a wanted node that is not a member, whose pod runs, is added as a learner (the admin API
//!    returns once it has caught up);
//! 4. a member beyond the wanted (the highest first) leaves: a learner at once; a voter only
//!    when the voters left keep a majority that is alive and caught up, and never while it
//!    leads — leadership moves to a healthy voter that stays first.
//!
//! Only when none of these can be done does it wait (for a pod to run, a learner to catch
//! up): a pod that never starts does not hold up a scale-down.
//!
//! Promoting a healthy node adds one voter and one healthy voter, and a majority of `n + 1`
//! is at most one more than a majority of `n`; removing follows the check above; moving
//! leadership changes no membership. So no step takes a group with a healthy majority below
//! one — the tests below check it over every small group.
//!
//! Pure: the reconciler observes (pods, the leader's view of the group), asks [`next`], does
//! the step through the database's admin API, and observes again.

use std::collections::BTreeSet;

/// A member's node id.
pub type NodeId = u64;

/// A member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id (ordinal + 1).
    pub id: NodeId,
    /// Voter, or learner.
    pub voter: bool,
    /// Answering the leader and caught up with its log (the leader itself always is).
    pub healthy: bool,
}

/// What the reconciler observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `spec.replicas`: the group should be nodes `1..=desired`, all voters.
    pub desired: NodeId,
    /// The leader's id.
    pub leader: NodeId,
    /// The members, as the leader reports them.
    pub members: Vec<Member>,
    /// Nodes whose pods run and answer the admin API.
    pub running: BTreeSet<NodeId>,
    /// Members whose storage is not the one they joined with: they lost their data, have
    /// forgotten their votes, and must leave and join afresh.
    pub lost: BTreeSet<NodeId>,
}

/// One membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Add the node as a learner and wait until it has caught up.
    AddLearner(NodeId),
    /// Make the learner a voter.
    Promote(NodeId),
    /// Move leadership to this voter (the leader is about to leave).
    TransferLeader(NodeId),
    /// Take the node out of the group.
    Remove(NodeId),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::AddLearner(id) => write!(f, "add member {id} as a learner"),
            Step::Promote(id) => write!(f, "promote member {id} to voter"),
            Step::TransferLeader(id) => write!(f, "move leadership to member {id}"),
            Step::Remove(id) => write!(f, "remove member {id}"),
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Make this change.
    Step(Step),
    /// Nothing can be done until something changes (a pod starts, a learner catches up).
    Wait(String),
    /// This change would leave the group without a majority: refused, saying why.
    Refuse(Step, String),
    /// The members are the wanted ones, all voters.
    Settled,
}

fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The next change towards `observed.desired`.
pub fn next(observed: &Observed) -> Next {
    let wanted = |id: NodeId| (1..=observed.desired).contains(&id);
    let member = |id: NodeId| observed.members.iter().find(|m| m.id == id);

    // A member that lost its data leaves first (and is added again below, afresh); if it
    // cannot yet, the other steps go on — one of them may make its leaving safe.
    let mut refused = None;
    if let Some(lost) = observed
        .members
        .iter()
        .filter(|m| observed.lost.contains(&m.id))
        .min_by_key(|m| m.id)
    {
        match leave(observed, lost) {
            Next::Step(step) => return Next::Step(step),
            other => refused = Some(other),
        }
    }
    if let Some(learner) = observed
        .members
        .iter()
        .find(|m| !m.voter && m.healthy && wanted(m.id))
    {
        return Next::Step(Step::Promote(learner.id));
    }
    let missing: Vec<NodeId> = (1..=observed.desired)
        .filter(|id| member(*id).is_none())
        .collect();
    if let Some(id) = missing.iter().find(|id| observed.running.contains(id)) {
        return Next::Step(Step::AddLearner(*id));
    }
    let waiting = match missing.first() {
        Some(id) => Some(format!(
            "waiting for pod {} to run before adding member {id}",
            id - 1
        )),
        None => observed
            .members
            .iter()
            .find(|m| !m.voter && wanted(m.id))
            .map(|learner| format!("member {} is catching up", learner.id)),
    };
    let beyond = observed
        .members
        .iter()
        .filter(|m| !wanted(m.id))
        .max_by_key(|m| m.id);
    match (beyond.map(|m| leave(observed, m)), refused, waiting) {
        (Some(Next::Step(step)), _, _) => Next::Step(step),
        (_, Some(refused), _) => refused,
        (_, None, Some(why)) => Next::Wait(why),
        (Some(refused), None, None) => refused,
        (None, None, None) => Next::Settled,
    }
}

/// The next step of `leaving` leaving the group, or why it cannot.
fn leave(observed: &Observed, leaving: &Member) -> Next {
    let stays = |id: NodeId| (1..=observed.desired).contains(&id) && id != leaving.id;
    if !leaving.voter {
        return Next::Step(Step::Remove(leaving.id));
    }
    let remaining: Vec<&Member> = observed
        .members
        .iter()
        .filter(|m| m.voter && m.id != leaving.id)
        .collect();
    let healthy = remaining.iter().filter(|m| m.healthy).count();
    let needed = majority(remaining.len());
    if healthy < needed {
        return Next::Refuse(
            Step::Remove(leaving.id),
            format!(
                "removing member {} would leave {} voters of which {healthy} are healthy; a majority needs {needed}",
                leaving.id,
                remaining.len()
            ),
        );
    }
    if leaving.id == observed.leader {
        return match remaining.iter().find(|m| m.healthy && stays(m.id)) {
            Some(to) => Next::Step(Step::TransferLeader(to.id)),
            None => Next::Refuse(
                Step::Remove(leaving.id),
                format!(
                    "member {} leads and no healthy member that stays can take over",
                    leaving.id
                ),
            ),
        };
    }
    Next::Step(Step::Remove(leaving.id))
}

/// The changes from here to `observed.desired` if every step succeeds and every node stays
/// as it is (pods not yet running assumed to start): for the status, not for acting.
pub fn plan(observed: &Observed) -> Vec<Step> {
    let mut state = observed.clone();
    state.running.extend(1..=state.desired);
    let mut steps = vec![];
    // A group of at most 99 members settles in far fewer steps; the bound only guards
    // against a planner bug turning the status into an endless list.
    for _ in 0..400 {
        let Next::Step(step) = next(&state) else {
            break;
        };
        apply(&mut state, step);
        steps.push(step);
    }
    steps
}

/// `step` as the group would carry it out: learners join healthy when their pod runs.
pub fn apply(state: &mut Observed, step: Step) {
    match step {
        Step::AddLearner(id) => state.members.push(Member {
            id,
            voter: false,
            healthy: state.running.contains(&id),
        }),
        Step::Promote(id) => {
            if let Some(m) = state.members.iter_mut().find(|m| m.id == id) {
                m.voter = true;
            }
        }
        Step::TransferLeader(id) => state.leader = id,
        Step::Remove(id) => {
            state.members.retain(|m| m.id != id);
            state.lost.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(voters: &[NodeId], learners: &[NodeId], down: &[NodeId], leader: NodeId) -> Observed {
        let member = |id: &NodeId, voter| Member {
            id: *id,
            voter,
            healthy: !down.contains(id),
        };
        let members = voters
            .iter()
            .map(|id| member(id, true))
            .chain(learners.iter().map(|id| member(id, false)))
            .collect();
        Observed {
            desired: 0,
            leader,
            members,
            running: (1..=9).filter(|id| !down.contains(id)).collect(),
            lost: BTreeSet::new(),
        }
    }

    fn scaled(mut g: Observed, desired: NodeId) -> Observed {
        g.desired = desired;
        g
    }

    fn healthy_majority(g: &Observed) -> bool {
        let voters: Vec<&Member> = g.members.iter().filter(|m| m.voter).collect();
        voters.iter().filter(|m| m.healthy).count() >= majority(voters.len())
    }

    #[test]
    fn scaling_up_adds_learners_and_promotes_them_one_at_a_time() {
        let steps = plan(&scaled(group(&[1], &[], &[], 1), 3));
        assert_eq!(
            steps,
            [
                Step::AddLearner(2),
                Step::Promote(2),
                Step::AddLearner(3),
                Step::Promote(3)
            ]
        );
    }

    #[test]
    fn scaling_down_moves_leadership_away_before_removing_the_leader() {
        let steps = plan(&scaled(group(&[1, 2, 3, 4, 5], &[], &[], 5), 3));
        assert_eq!(
            steps,
            [Step::TransferLeader(1), Step::Remove(5), Step::Remove(4)]
        );
    }

    #[test]
    fn a_scale_down_that_would_lose_the_majority_is_refused_saying_why() {
        // 3 → 2 with member 2 down: {1, 2} would need both.
        let refused = next(&scaled(group(&[1, 2, 3], &[], &[2], 1), 2));
        assert_eq!(
            refused,
            Next::Refuse(
                Step::Remove(3),
                "removing member 3 would leave 2 voters of which 1 are healthy; a majority needs 2"
                    .into()
            )
        );
        // Removing the member that is down is always fine.
        assert_eq!(
            next(&scaled(group(&[1, 2, 3], &[], &[3], 1), 2)),
            Next::Step(Step::Remove(3))
        );
    }

    #[test]
    fn new_members_wait_for_their_pods_and_learners_for_their_log() {
        let mut g = scaled(group(&[1], &[], &[], 1), 2);
        g.running.remove(&2);
        assert_eq!(
            next(&g),
            Next::Wait("waiting for pod 1 to run before adding member 2".into())
        );
        let catching_up = scaled(group(&[1], &[2], &[2], 1), 2);
        assert_eq!(
            next(&catching_up),
            Next::Wait("member 2 is catching up".into())
        );
        assert_eq!(next(&scaled(group(&[1, 2], &[], &[], 2), 2)), Next::Settled);
    }

    #[test]
    fn a_member_that_lost_its_data_leaves_and_joins_afresh() {
        let mut g = scaled(group(&[1, 2, 3], &[], &[], 1), 3);
        g.lost.insert(3);
        assert_eq!(
            plan(&g),
            [Step::Remove(3), Step::AddLearner(3), Step::Promote(3)]
        );
        // A lost leader hands over first.
        let mut g = scaled(group(&[1, 2, 3], &[], &[], 3), 3);
        g.lost.insert(3);
        assert_eq!(next(&g), Next::Step(Step::TransferLeader(1)));
        // Not at the price of the majority: with member 2 down it stays, refused.
        let mut g = scaled(group(&[1, 2, 3], &[], &[2], 1), 3);
        g.lost.insert(3);
        assert!(matches!(next(&g), Next::Refuse(Step::Remove(3), _)));
        // … unless another step makes it safe: a caught-up learner is promoted first.
        let mut g = scaled(group(&[1, 2, 3], &[4], &[2], 1), 4);
        g.lost.insert(3);
        assert_eq!(next(&g), Next::Step(Step::Promote(4)));
        apply(&mut g, Step::Promote(4));
        assert_eq!(next(&g), Next::Step(Step::Remove(3)));
    }

    #[test]
    fn a_pod_that_never_runs_does_not_hold_up_a_scale_down() {
        // 3 → 5 added member 5 while pod 3 (member 4) never ran; back to 4, member 5 leaves.
        let mut g = scaled(group(&[1, 2, 3, 5], &[], &[], 1), 4);
        g.running.remove(&4);
        assert_eq!(next(&g), Next::Step(Step::Remove(5)));
        // Once it has left, the missing pod is what is waited for.
        let mut g = scaled(group(&[1, 2, 3], &[], &[], 1), 4);
        g.running.remove(&4);
        assert_eq!(
            next(&g),
            Next::Wait("waiting for pod 3 to run before adding member 4".into())
        );
    }

    /// Every group of up to 7 voters and 2 learners, every set of down nodes that leaves a
    /// healthy majority, every leader among the healthy voters, every target from 1 to 7:
    /// carried out step by step (a learner joins healthy if its pod runs), no step leaves the
    /// group without a healthy majority, and it ends settled, waiting or refused.
    #[test]
    fn no_step_of_any_small_scaling_leaves_a_group_below_a_majority() {
        let mut checked = 0;
        for size in 1..=7u64 {
            let voters: Vec<NodeId> = (1..=size).collect();
            for learners in [vec![], vec![size + 1], vec![size + 1, size + 2]] {
                let all: Vec<NodeId> = voters.iter().chain(&learners).copied().collect();
                for down_mask in 0u32..(1 << all.len()) {
                    let down: Vec<NodeId> = all
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| down_mask & (1 << i) != 0)
                        .map(|(_, id)| *id)
                        .collect();
                    for &leader in voters.iter().filter(|id| !down.contains(id)) {
                        for desired in 1..=7 {
                            let mut state =
                                scaled(group(&voters, &learners, &down, leader), desired);
                            if !healthy_majority(&state) {
                                continue;
                            }
                            checked += 1;
                            for _ in 0..100 {
                                match next(&state) {
                                    Next::Step(step) => {
                                        if let Step::Promote(id) = step {
                                            assert!(
                                                state
                                                    .members
                                                    .iter()
                                                    .any(|m| m.id == id && m.healthy),
                                                "promoted an unhealthy learner"
                                            );
                                        }
                                        if let Step::Remove(id) = step {
                                            assert_ne!(id, state.leader, "removed the leader");
                                        }
                                        apply(&mut state, step);
                                        assert!(
                                            healthy_majority(&state),
                                            "{step} left {state:?} without a healthy majority"
                                        );
                                    }
                                    Next::Settled => {
                                        let ids: Vec<NodeId> =
                                            state.members.iter().map(|m| m.id).collect();
                                        assert!(ids.iter().all(|id| *id <= desired));
                                        assert!(state.members.iter().all(|m| m.voter));
                                        break;
                                    }
                                    Next::Wait(_) | Next::Refuse(..) => break,
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "only {checked} cases");
    }
}
