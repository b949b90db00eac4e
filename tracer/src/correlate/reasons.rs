//! Why a waiting request was not scheduled in a step, from the snapshot after `schedule()`.
//!
//! vLLM V1's scheduler serves the running requests first, then admits waiting requests in
//! queue order until one cannot be admitted; that one is the *head*, and everything behind
//! it waits because of it (FCFS). Requests the scheduler skips rather than stops at —
//! waiting for a grammar (FSM) or for remote KV blocks — do not stop the queue. The rules,
//! in order, for each waiting request:
//!
//! 1. status `WAITING_FOR_FSM` → `grammar`; `WAITING_FOR_REMOTE_KVS` → `remote_kv`;
//! 2. preempted in this very step → `preempted`;
//! 3. behind the head → `blocked_behind_head`;
//! 4. the head: a preemption in this step (the scheduler admits nobody after one: KV ran
//!    out) or too few free KV blocks for its next chunk → `no_kv_blocks`; else the running
//!    list at `max_num_seqs` → `max_num_seqs`; else the step's token budget spent →
//!    `token_budget`; else → `other`.
//!
//! LoRA-slot and encoder-budget waits need state the snapshot does not copy yet; they show
//! up as `other`.

use crate::{
    capture::{Budgets, RequestState},
    sinks::rows::WaitReason,
};

pub const PREEMPTED: &str = "PREEMPTED";
const WAITING_FOR_FSM: &str = "WAITING_FOR_FSM";
const WAITING_FOR_REMOTE_KVS: &str = "WAITING_FOR_REMOTE_KVS";

/// The step-wide facts the rules use.
pub struct Context<'a> {
    pub budgets: &'a Budgets,
    /// Running requests after `schedule()`.
    pub running: u32,
    /// Tokens scheduled in the step.
    pub scheduled_tokens: u32,
    pub kv_free: Option<u32>,
    pub any_preempted: bool,
}

/// The reason for one waiting request; `blocked` carries "the head was passed" along the
/// queue (start it `false` per step and pass the requests in queue order).
pub fn classify(
    context: &Context,
    request: &RequestState,
    prompt_tokens: Option<u32>,
    preempted_now: bool,
    blocked: &mut bool,
) -> WaitReason {
    match request.status.as_deref() {
        Some(WAITING_FOR_FSM) => return WaitReason::Grammar,
        Some(WAITING_FOR_REMOTE_KVS) => return WaitReason::RemoteKv,
        _ => {}
    }
    if preempted_now {
        return WaitReason::Preempted;
    }
    if std::mem::replace(blocked, true) {
        return WaitReason::BlockedBehindHead;
    }
    let budgets = context.budgets;
    let budget_left = budgets
        .max_num_batched_tokens
        .map(|max| max.saturating_sub(context.scheduled_tokens));
    // The next chunk: the rest of its prompt, cut to the tokens left in the step.
    let needed_tokens = prompt_tokens.map(|prompt| {
        let rest = prompt.saturating_sub(request.computed_tokens.unwrap_or(0).max(0) as u32);
        budget_left.map_or(rest, |left| rest.min(left)).max(1)
    });
    let short_of_blocks = match (context.kv_free, budgets.block_size, needed_tokens) {
        (Some(free), Some(size), Some(tokens)) if size > 0 => {
            u64::from(free) * u64::from(size) < u64::from(tokens)
        }
        _ => false,
    };
    if context.any_preempted || short_of_blocks {
        WaitReason::NoKvBlocks
    } else if budgets
        .max_num_seqs
        .is_some_and(|max| context.running >= max)
    {
        WaitReason::MaxNumSeqs
    } else if budget_left == Some(0) {
        WaitReason::TokenBudget
    } else {
        WaitReason::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(status: &str, computed: i32) -> RequestState {
        RequestState {
            status: Some(status.into()),
            computed_tokens: Some(computed),
            ..RequestState::default()
        }
    }

    #[test]
    fn head_gets_the_budget_reason_and_the_rest_wait_behind_it() {
        let budgets = Budgets {
            max_num_seqs: Some(4),
            max_num_batched_tokens: Some(100),
            block_size: Some(16),
            kv_blocks_total: Some(64),
        };
        let context = |running, scheduled_tokens, kv_free, any_preempted| Context {
            budgets: &budgets,
            running,
            scheduled_tokens,
            kv_free: Some(kv_free),
            any_preempted,
        };
        let reasons = |context: &Context, queue: &[(RequestState, bool)]| {
            let mut blocked = false;
            queue
                .iter()
                .map(|(r, preempted)| classify(context, r, Some(50), *preempted, &mut blocked))
                .collect::<Vec<_>>()
        };
        let queue = [
            (waiting("WAITING_FOR_FSM", 0), false),
            (waiting("WAITING", 0), false),
            (waiting("WAITING", 0), false),
        ];
        use WaitReason::*;
        assert_eq!(
            reasons(&context(4, 10, 60, false), &queue),
            [Grammar, MaxNumSeqs, BlockedBehindHead]
        );
        assert_eq!(
            reasons(&context(2, 100, 60, false), &queue),
            [Grammar, TokenBudget, BlockedBehindHead]
        );
        // 2 free blocks of 16 tokens cannot hold the 50-token prompt.
        assert_eq!(
            reasons(&context(2, 10, 2, false), &queue),
            [Grammar, NoKvBlocks, BlockedBehindHead]
        );
        let after_preemption = [
            (waiting("PREEMPTED", 0), true),
            (waiting("WAITING", 0), false),
            (waiting("WAITING", 0), false),
        ];
        assert_eq!(
            reasons(&context(2, 10, 60, true), &after_preemption),
            [Preempted, NoKvBlocks, BlockedBehindHead]
        );
        assert_eq!(reasons(&context(2, 10, 60, false), &queue[1..2]), [Other]);
    }
}
