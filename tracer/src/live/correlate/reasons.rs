//! Why a waiting request was not scheduled in a step, from the snapshot after `schedule()`.
//!
//! vLLM V1's scheduler serves the running requests first, then walks the waiting queue in
//! order, admitting requests until something stops the walk. Requests it skips rather than
//! stops at (a grammar still compiling, remote KV still loading) are put back at the front.
//! So the reasons follow from where and why the walk stopped, which the snapshot shows
//! through the step's budgets. Rules, first match wins:
//!
//! 1. preempted by this very `schedule()` → `preempted`;
//! 2. status `WAITING_FOR_REMOTE_KVS` → `remote_kv`; a grammar status
//!    ([`StatusNames::grammar`](crate::inspect::vllm::StatusNames::grammar)) → `grammar`;
//! 3. reasons that stopped the walk before any waiting request was tried apply to all of
//!    them, in the scheduler's order of checks: a preemption in this step (the walk does not
//!    run after one: KV ran out) → `no_kv_blocks`; no token budget left → `token_budget`;
//!    the running list at `max_num_seqs` → `max_num_seqs`;
//! 4. otherwise the walk stopped at the first request not skipped (the *head*): too few free
//!    KV blocks for its next chunk → `no_kv_blocks`; its remaining tokens larger than the
//!    token budget left (only stops the walk without chunked prefill) → `token_budget`;
//!    neither → `other`. Everything behind the head → `blocked_behind_head`.
//!
//! Not visible in a snapshot, so not produced: `lora` (a request skipped because
//! `max_loras` adapters run), `encoder` (encoder budget spent before its image) and the
//! scheduler being paused; such waits show up as the rule above that matches instead.

use crate::{
    inspect::vllm::REQUEST_STATUSES as STATUSES,
    live::snapshot::{Budgets, RequestState},
    schema::rows::WaitReason,
};

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

/// One waiting request, as the rules see it.
pub struct Waiting<'a> {
    pub state: &'a RequestState,
    pub prompt_tokens: Option<u32>,
    pub preempted_now: bool,
}

/// The reason of each waiting request, in queue order.
pub fn classify(context: &Context, queue: &[Waiting]) -> Vec<WaitReason> {
    let budgets = context.budgets;
    let budget_left = budgets
        .max_num_batched_tokens
        .map(|max| max.saturating_sub(context.scheduled_tokens));
    let whole_queue = if context.any_preempted {
        Some(WaitReason::NoKvBlocks)
    } else if budget_left == Some(0) {
        Some(WaitReason::TokenBudget)
    } else if budgets
        .max_num_seqs
        .is_some_and(|max| context.running >= max)
    {
        Some(WaitReason::MaxNumSeqs)
    } else {
        None
    };
    let mut head_passed = false;
    queue
        .iter()
        .map(|waiting| {
            if waiting.preempted_now {
                return WaitReason::Preempted;
            }
            match waiting.state.status.as_deref() {
                Some(status) if status == STATUSES.remote_kvs => return WaitReason::RemoteKv,
                Some(status) if STATUSES.grammar.contains(&status) => return WaitReason::Grammar,
                _ => {}
            }
            if let Some(reason) = whole_queue {
                return reason;
            }
            if std::mem::replace(&mut head_passed, true) {
                return WaitReason::BlockedBehindHead;
            }
            head_reason(context, waiting, budget_left)
        })
        .collect()
}

/// Why the walk stopped at the head.
fn head_reason(context: &Context, head: &Waiting, budget_left: Option<u32>) -> WaitReason {
    // A resumed request recomputes its output tokens too.
    let tokens = head
        .prompt_tokens
        .map(|prompt| prompt.saturating_add(head.state.output_tokens.unwrap_or(0).max(0) as u32));
    let rest = tokens
        .map(|tokens| tokens.saturating_sub(head.state.computed_tokens.unwrap_or(0).max(0) as u32));
    // The next chunk: the rest of its prompt, cut to the tokens left in the step.
    let chunk = rest.map(|rest| budget_left.map_or(rest, |left| rest.min(left)).max(1));
    let short_of_blocks = match (context.kv_free, context.budgets.block_size, chunk) {
        (Some(free), Some(size), Some(tokens)) if size > 0 => {
            u64::from(free) * u64::from(size) < u64::from(tokens)
        }
        _ => false,
    };
    if short_of_blocks {
        WaitReason::NoKvBlocks
    } else if rest
        .zip(budget_left)
        .is_some_and(|(rest, left)| rest > left)
    {
        WaitReason::TokenBudget
    } else {
        WaitReason::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(status: &str, computed: i32) -> RequestState {
        RequestState {
            status: Some(status.into()),
            computed_tokens: Some(computed),
            ..RequestState::default()
        }
    }

    #[test]
    fn whole_queue_reasons_go_to_everyone_and_head_reasons_block_the_rest() {
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
        let grammar = request("WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR", 0);
        let fsm = request("WAITING_FOR_FSM", 0);
        let waiting = request("WAITING", 0);
        let preempted = request("PREEMPTED", 0);
        let queue = |states: &[(&RequestState, bool)]| -> Vec<(RequestState, bool)> {
            states.iter().map(|(s, p)| ((*s).clone(), *p)).collect()
        };
        let reasons = |context: &Context, queue: &[(RequestState, bool)]| {
            let waiting: Vec<Waiting> = queue
                .iter()
                .map(|(state, preempted_now)| Waiting {
                    state,
                    prompt_tokens: Some(50),
                    preempted_now: *preempted_now,
                })
                .collect();
            classify(context, &waiting)
        };
        use WaitReason::*;
        let plain = queue(&[
            (&grammar, false),
            (&waiting, false),
            (&fsm, false),
            (&waiting, false),
        ]);
        assert_eq!(
            reasons(&context(4, 10, 60, false), &plain),
            [Grammar, MaxNumSeqs, Grammar, MaxNumSeqs]
        );
        // Budget spent and running full: the budget is checked first.
        assert_eq!(
            reasons(&context(4, 100, 60, false), &plain),
            [Grammar, TokenBudget, Grammar, TokenBudget]
        );
        // 2 free blocks of 16 tokens cannot hold the 50-token prompt: the head stops the walk.
        assert_eq!(
            reasons(&context(2, 10, 2, false), &plain),
            [Grammar, NoKvBlocks, Grammar, BlockedBehindHead]
        );
        // 50 prompt tokens, 20 left in the budget, blocks enough: only without chunked
        // prefill does that stop the walk.
        assert_eq!(
            reasons(&context(2, 80, 60, false), &plain),
            [Grammar, TokenBudget, Grammar, BlockedBehindHead]
        );
        let after_preemption = queue(&[(&preempted, true), (&waiting, false), (&preempted, false)]);
        assert_eq!(
            reasons(&context(2, 10, 60, true), &after_preemption),
            [Preempted, NoKvBlocks, NoKvBlocks]
        );
        assert_eq!(reasons(&context(2, 10, 60, false), &plain[1..2]), [Other]);
    }
}
