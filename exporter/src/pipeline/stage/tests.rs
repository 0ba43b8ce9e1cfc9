//! A stage between a source of records some of which do not decode and a pairing that
//! pairs nothing: what it hands over says how many records it could not read.
use std::{collections::VecDeque, time::Duration};

use super::{Pairing, Source, Stage};
use crate::events::ReadError;

/// Reads while the stage runs come in turns, (records, undecodable) each, then
/// nothing, ever; reads at the stop take `at_stop`'s turns.
struct Turns {
    reads: VecDeque<(Vec<u32>, u64)>,
    at_stop: VecDeque<(Vec<u32>, u64)>,
}

impl Source for Turns {
    type Record = u32;
    const PER_BATCH: usize = 64;

    async fn next_batch(&mut self, _max: usize, out: &mut Vec<u32>) -> Result<u64, ReadError> {
        match self.reads.pop_front() {
            Some((records, undecodable)) => {
                out.extend(records);
                Ok(undecodable)
            }
            None => std::future::pending().await,
        }
    }

    fn read_now(&mut self, _max: usize, out: &mut Vec<u32>) -> u64 {
        self.at_stop.pop_front().map_or(0, |(records, undecodable)| {
            out.extend(records);
            undecodable
        })
    }
}

/// Every record is an item at once.
struct Each;

impl Pairing for Each {
    type Record = u32;
    type Item = u32;
    type Losses = u64;
    fn record(&mut self, record: &u32, out: &mut Vec<u32>) {
        out.push(*record);
    }
    fn expire(&mut self, _now_ns: u64, _out: &mut Vec<u32>) {}
    fn take_losses(&mut self) -> u64 {
        0
    }
    fn held(&self) -> usize {
        0
    }
    fn abandon(&mut self) {}
}

#[tokio::test]
async fn records_that_do_not_decode_are_counted_in_the_batches() {
    let turns = VecDeque::from([(vec![1, 2], 1), (vec![], 2), (vec![3], 0)]);
    let mut stage = Stage::spawn(Turns { reads: turns, at_stop: VecDeque::new() }, Each);
    let mut items = Vec::new();
    let mut undecodable = 0;
    while items.len() < 3 || undecodable < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(5), stage.batches.recv())
            .await
            .expect("a batch within 5 s")
            .expect("the stage runs");
        items.extend(batch.items);
        undecodable += batch.losses.undecodable;
    }
    assert_eq!((items, undecodable), (vec![1, 2, 3], 3));
}

#[tokio::test]
async fn records_that_do_not_decode_at_the_last_read_are_counted() {
    let at_stop = VecDeque::from([(vec![4], 2)]);
    let mut stage = Stage::spawn(Turns { reads: VecDeque::new(), at_stop }, Each);
    let batches = stage.finish(Duration::from_secs(5)).await;
    let items: Vec<_> = batches.iter().flat_map(|b| b.items.clone()).collect();
    let undecodable: u64 = batches.iter().map(|b| b.losses.undecodable).sum();
    assert_eq!((items, undecodable), (vec![4], 2));
}
