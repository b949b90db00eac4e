//! `steps.csv`: one row per engine step (the row type is [`StepRow`]).

use super::csv_sink::CsvSink;
pub use crate::schema::rows::StepRow;
use crate::{
    live::{
        correlate::Step,
        cuda::{CudaStepStats, RankStats},
    },
    schema::rows::RankRow,
};

impl StepRow {
    pub fn new(step: &Step, pid: u32, trace_start_ns: u64) -> Self {
        Self {
            step: step.index,
            pid,
            tid: step.tid,
            start_ns: step.start_ns,
            start_rel_ns: step.start_ns as i64 - trace_start_ns as i64,
            schedule_ns: step.schedule_ns(),
            execute_ns: step.execute_ns(),
            update_ns: step.update_ns(),
            step_ns: step.step_ns(),
            overlap_ns: step.overlap_ns,
            tracer_ns: (step.after_execute.is_some() || step.after_update.is_some())
                .then(|| step.tracer_ns()),
            ..Self::default()
        }
    }

    pub fn with_cuda(self, cuda: &CudaStepStats) -> Self {
        Self {
            cuda_launches: cuda.launches,
            cuda_graph_launches: cuda.graph_launches,
            cuda_syncs: cuda.syncs,
            cuda_sync_ns: cuda.sync_ns,
            cuda_d2h_copies: cuda.d2h_copies,
            cuda_d2h_ns: cuda.d2h_ns,
            exec_launch_host_ns: cuda.exec_launch_host_ns,
            exec_gpu_wait_ns: cuda.exec_gpu_wait_ns,
            slowest_rank: cuda.slowest_rank.clone(),
            rank_skew_ns: cuda.rank_skew_ns,
            ..self
        }
    }
}

impl RankRow {
    pub fn new(step: &Step, pid: u32, rank: &RankStats) -> Self {
        Self {
            step: step.index,
            pid,
            rank: rank.rank.clone(),
            worker_pid: rank.pid,
            cuda_launches: rank.launches,
            cuda_graph_launches: rank.graph_launches,
            cuda_syncs: rank.syncs,
            cuda_sync_ns: rank.sync_ns,
            cuda_d2h_copies: rank.d2h_copies,
            cuda_d2h_ns: rank.d2h_ns,
            gpu_wait_ns: rank.gpu_wait_ns,
            wait_start_ns: rank.wait_start_ns,
            wait_end_ns: rank.wait_end_ns,
        }
    }
}

pub type StepsCsv = CsvSink<StepRow>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_header() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::schema::out_dir::OutDir::create(tmp.path()).unwrap();
        let path = dir.join("steps.csv");
        let step = Step {
            index: 3,
            tid: 11,
            start_ns: 1_000,
            schedule_done_ns: 1_040,
            execute_done_ns: 2_040,
            update_done_ns: 2_060,
            ..Step::default()
        };
        let row = StepRow::new(&step, 10, 400);
        let with_cuda = row.clone().with_cuda(&CudaStepStats {
            graph_launches: Some(1),
            syncs: Some(1),
            sync_ns: Some(700),
            d2h_copies: Some(1),
            d2h_ns: Some(50),
            exec_launch_host_ns: Some(250),
            exec_gpu_wait_ns: Some(750),
            slowest_rank: Some("TP1".into()),
            rank_skew_ns: Some(40),
            ..Default::default()
        });
        let mut csv = StepsCsv::create(&dir, "steps.csv").unwrap();
        csv.write(&row).unwrap();
        csv.write(&with_cuda).unwrap();
        let batch = ",,,,,,,,,,,,,,,";
        csv.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!(
                "step,pid,tid,start_ns,start_rel_ns,schedule_ns,execute_ns,update_ns,step_ns,\
                 overlap_ns,tracer_ns,batch_size,scheduled_tokens,prefill_tokens,decode_tokens,prefill_requests,\
                 decode_requests,new_requests,resumed_requests,context_tokens_sum,\
                 context_tokens_max,running,waiting,preempted,finished,kv_blocks_used,\
                 kv_blocks_total,\
                 cuda_launches,cuda_graph_launches,cuda_syncs,cuda_sync_ns,cuda_d2h_copies,\
                 cuda_d2h_ns,exec_launch_host_ns,exec_gpu_wait_ns,slowest_rank,rank_skew_ns\n\
                 3,10,11,1000,600,40,1000,20,1060,0,,{batch},,,,,,,,,,\n\
                 3,10,11,1000,600,40,1000,20,1060,0,,{batch},,1,1,700,1,50,250,750,TP1,40\n"
            )
        );
        let back: Vec<StepRow> = csv::Reader::from_path(&path)
            .unwrap()
            .deserialize()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, [row.clone(), with_cuda]);
    }
}
