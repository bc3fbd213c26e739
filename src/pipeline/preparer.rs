//! Stage 2: screen each prompt with the input filters, then decode images and tokenize. A
//! failure here is that item's failed row; the rest go on.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::model_stage::image_source;
use super::screening::{set_filter_columns, Filters};
use super::tasks::{PreparedItem, Provenance, WorkItem};
use super::Finished;
use crate::filters::{Outcome, Stage};
use crate::model::{Preparer, Request};
use crate::spec::TaskSpec;

pub(crate) struct PrepareStage {
    pub preparer: Arc<Preparer>,
    pub tasks: Vec<TaskSpec>,
    pub provenance: Provenance,
    pub filters: Filters,
    pub item_rx: mpsc::Receiver<WorkItem>,
    pub prep_tx: mpsc::Sender<PreparedItem>,
    pub row_tx: mpsc::Sender<Finished>,
}

impl PrepareStage {
    pub fn run(mut self) {
        while let Some(item) = self.item_rx.blocking_recv() {
            let sent = match self.prepare(item) {
                Ok(p) => self.prep_tx.blocking_send(p).is_ok(),
                Err(f) => self.row_tx.blocking_send(*f).is_ok(),
            };
            if !sent {
                return;
            }
        }
    }

    /// The item ready for the model, or its finished row (filtered out or failed).
    fn prepare(&self, mut item: WorkItem) -> Result<PreparedItem, Box<Finished>> {
        let task = &self.tasks[item.task];
        if let Some(set) = &self.filters.input {
            let screening = set.screen(&item.prompt, Some(Stage::Input));
            item.decisions = screening.decisions;
            // The model (and the stored prompt) see the redacted text.
            item.prompt = screening.text;
            let outcome = crate::filters::outcome(&item.decisions);
            if matches!(outcome, Outcome::Drop | Outcome::Quarantine) {
                let mut r = self.provenance.row(&item, task);
                set_filter_columns(&mut r, &item.decisions);
                return Err(Box::new(Finished::new(r, outcome)));
            }
        }
        let request = Request {
            system: item.system.clone(),
            prompt: item.prompt.clone(),
            images: item.image.iter().map(image_source).collect(),
        };
        match self.preparer.prepare(&request) {
            Ok(prepared) => Ok(PreparedItem { item, prepared }),
            Err(e) => {
                let mut r = self.provenance.row(&item, task);
                r.error = Some(e.to_string());
                if self.filters.any() {
                    set_filter_columns(&mut r, &item.decisions);
                }
                Err(Box::new(Finished::new(r, crate::filters::outcome(&item.decisions))))
            }
        }
    }
}
