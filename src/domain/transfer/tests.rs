use serde_json::{Value, json};

use super::*;
use crate::domain::FieldError;

fn u(id: i64) -> UserId {
    UserId::new(id).unwrap()
}

fn plan(v: Value) -> Result<TransferPlan, FieldError> {
    TransferPlan::parse(&v)?.resolve(None)
}

#[test]
fn a_types_own_rule_wins_over_the_default() {
    let p = plan(json!({
        "default": {"mode": "single", "targets": [{"user_id": 12}]},
        "deals": {"mode": "ratio", "scope": "all",
                  "targets": [{"user_id": 12, "weight": 2}, {"user_id": 13, "weight": 1}]},
    }))
    .unwrap();
    assert_eq!(p.rule_for(ItemType::Leads).unwrap().distribution, Distribution::Single(u(12)));
    let deals = p.rule_for(ItemType::Deals).unwrap();
    assert_eq!(deals.scope, Scope::All);
    assert_eq!(deals.distribution.mode(), "ratio");
}

#[test]
fn a_type_with_no_rule_stays() {
    let p = plan(json!({"deals": {"mode": "single", "targets": [{"user_id": 12}]}})).unwrap();
    assert!(p.rule_for(ItemType::Leads).is_none());
    assert_eq!(p.item_types(), vec![ItemType::Deals]);
}

#[test]
fn ratio_cycles_through_weights() {
    let d = Distribution::Ratio(vec![(u(1), 2), (u(2), 1)]);
    let owners: Vec<_> = (0..7).map(|p| d.recipient_at(p).unwrap().get()).collect();
    assert_eq!(owners, vec![1, 1, 2, 1, 1, 2, 1]);
    assert_eq!(d.split(7), Split { targets: vec![(u(1), 5), (u(2), 2)], stays: 0 });
}

#[test]
fn hardcoded_leaves_the_rest_with_the_user() {
    let d = Distribution::Hardcoded(vec![(u(1), 2), (u(2), 3)]);
    assert_eq!(d.split(7), Split { targets: vec![(u(1), 2), (u(2), 3)], stays: 2 });
    assert_eq!(d.split(4), Split { targets: vec![(u(1), 2), (u(2), 2)], stays: 0 });
    assert_eq!(d.recipient_at(5), None);
    assert_eq!(d.moves_at_most(7), 5);
}

#[test]
fn stored_form_round_trips() {
    let p = plan(json!({
        "default": {"mode": "hardcoded", "targets": [{"user_id": 3, "count": 5}]},
        "activities": {"mode": "ratio", "targets": [{"user_id": 4, "weight": 0}, {"user_id": 5, "weight": 1}]},
    }))
    .unwrap();
    assert_eq!(TransferPlan::from_stored(&p.to_json()).unwrap(), p);
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (json!({"dealz": {"mode": "single", "targets": [{"user_id": 1}]}}), "transfer.dealz"),
        (json!({"deals": {"mode": "spread", "targets": [{"user_id": 1}]}}), "transfer.deals.mode"),
        (
            json!({"deals": {"mode": "ratio", "targets": [{"user_id": 1, "weight": 1}, {"user_id": 2, "weight": -1}]}}),
            "transfer.deals.targets[1].weight",
        ),
        (
            json!({"deals": {"mode": "ratio", "targets": [{"user_id": 1, "weight": 0}]}}),
            "transfer.deals.targets",
        ),
        (
            json!({"leads": {"mode": "hardcoded", "targets": [{"user_id": 1}]}}),
            "transfer.leads.targets[0].count",
        ),
        (
            json!({"default": {"mode": "single", "targets": [{"user_id": 1}, {"user_id": 2}]}}),
            "transfer.default.targets",
        ),
        (
            json!({"default": {"mode": "single", "targets": [{"user_id": "x"}]}}),
            "transfer.default.targets[0].user_id",
        ),
        (
            json!({"default": {"mode": "single", "scope": "closed", "targets": [{"user_id": 1}]}}),
            "transfer.default.scope",
        ),
        (
            json!({"deals": {"mode": "ratio", "targets": [{"user_id": 1, "weight": 1}, {"user_id": 1, "weight": 1}]}}),
            "transfer.deals.targets[1]",
        ),
        (
            json!({"deals": {"mode": "single", "targets": [{"replacement": true}]}}),
            "transfer.deals.targets[0].replacement",
        ),
    ];
    for (input, field) in cases {
        let err = plan(input.clone()).unwrap_err();
        assert_eq!(err.field, field, "for {input}: {err}");
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn targets(max: u64) -> impl Strategy<Value = Vec<(UserId, u64)>> {
        prop::collection::vec(0..=max, 1..6).prop_map(|amounts| {
            amounts.into_iter().enumerate().map(|(i, a)| (u(i as i64 + 1), a)).collect()
        })
    }

    fn ratio() -> impl Strategy<Value = Distribution<UserId>> {
        targets(5)
            .prop_filter("weights not all zero", |t| t.iter().any(|(_, w)| *w > 0))
            .prop_map(Distribution::Ratio)
    }

    fn any_distribution() -> impl Strategy<Value = Distribution<UserId>> {
        prop_oneof![
            (1i64..10).prop_map(|id| Distribution::Single(u(id))),
            ratio(),
            targets(40).prop_map(Distribution::Hardcoded),
        ]
    }

    /// Counts per target by walking every position: the definition the split must match.
    fn walk(d: &Distribution<UserId>, n: u64) -> (BTreeMap<UserId, u64>, u64) {
        let mut counts = BTreeMap::new();
        let mut stays = 0;
        for position in 0..n {
            match d.recipient_at(position) {
                Some(t) => *counts.entry(t).or_default() += 1,
                None => stays += 1,
            }
        }
        (counts, stays)
    }

    proptest! {
        #[test]
        fn a_split_preserves_the_total(d in any_distribution(), n in 0u64..500) {
            let split = d.split(n);
            prop_assert_eq!(split.targets.iter().map(|(_, c)| c).sum::<u64>() + split.stays, n);
        }

        #[test]
        fn a_split_agrees_with_item_by_item_assignment(d in any_distribution(), n in 0u64..300) {
            let split = d.split(n);
            let (walked, stays) = walk(&d, n);
            prop_assert_eq!(split.stays, stays);
            for (target, count) in &split.targets {
                prop_assert_eq!(*count, walked.get(target).copied().unwrap_or(0));
            }
        }

        #[test]
        fn ratio_repeats_its_cycle(d in ratio(), n in 0u64..300) {
            let Distribution::Ratio(weights) = &d else { unreachable!() };
            let cycle: u64 = weights.iter().map(|(_, w)| w).sum();
            for position in 0..n {
                prop_assert_eq!(d.recipient_at(position), d.recipient_at(position + cycle));
            }
            // Over whole cycles every target gets exactly its weight per cycle.
            let split = d.split(cycle * 3);
            for ((_, weight), (_, count)) in weights.iter().zip(&split.targets) {
                prop_assert_eq!(*count, weight * 3);
            }
            prop_assert_eq!(split.stays, 0);
        }

        #[test]
        fn zero_weight_targets_receive_nothing(d in ratio(), n in 0u64..300) {
            let Distribution::Ratio(weights) = &d else { unreachable!() };
            for ((target, weight), (_, count)) in weights.iter().zip(&d.split(n).targets) {
                if *weight == 0 {
                    prop_assert_eq!(*count, 0, "user {} has weight 0", target);
                }
            }
        }

        #[test]
        fn hardcoded_leftovers_stay_and_counts_are_never_exceeded(counts in targets(40), n in 0u64..300) {
            let d = Distribution::Hardcoded(counts.clone());
            let split = d.split(n);
            let capacity: u64 = counts.iter().map(|(_, c)| c).sum();
            prop_assert_eq!(split.stays, n.saturating_sub(capacity));
            for ((_, limit), (_, got)) in counts.iter().zip(&split.targets) {
                prop_assert!(got <= limit);
            }
            prop_assert_eq!(d.moves_at_most(n), n.min(capacity));
        }

        #[test]
        fn the_outcome_is_deterministic(d in any_distribution(), n in 0u64..300) {
            prop_assert_eq!(d.split(n), d.clone().split(n));
            let first: Vec<_> = (0..n).map(|p| d.recipient_at(p)).collect();
            let second: Vec<_> = (0..n).map(|p| d.recipient_at(p)).collect();
            prop_assert_eq!(first, second);
        }
    }
}
