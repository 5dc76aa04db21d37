//! The entity mixes: a journal of N events filled for each mix of events
//! per entity id that the query phase did not fill (its journal is the
//! default mix), for its bytes on disk, fill rate and peak RSS. A user's
//! disk use must not depend on how often their CRM updates a record.

use super::harness::Harness;

impl Harness {
    /// Fills N events of every mix in `--mixes` but the query journal's
    /// into a fresh directory each, then removes it.
    pub(super) fn mixes(&mut self) -> anyhow::Result<()> {
        for per_entity in self.o.mixes.clone() {
            if per_entity == self.o.query_per_entity {
                continue;
            }
            let data = self.o.tmp.join(format!("mix-{per_entity}-data"));
            let row = self.fill(&data, per_entity, 0, self.o.n);
            let _ = std::fs::remove_dir_all(&data);
            self.r.mixes.push(row?);
        }
        Ok(())
    }
}
