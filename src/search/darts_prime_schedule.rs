//! DARTS-PRIME's dynamic alpha-step schedule (Maile et al. 2021, section 3.1): an EWMA of the
//! weight-gradient signal `FI` against a threshold that shrinks when an alpha step fires and
//! grows when it does not, as plain data so that it checkpoints as JSON.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{DartsPrimeParams, SearchError};

/// Decisions further back than this many iterations are forgotten (no loop asks that late; the
/// RL loop asks about one PPO update's few dozen weight steps).
const DECISION_WINDOW: u64 = 4096;

/// Where the threshold stops moving (see [`PrimeSchedule::observe`]).
pub(super) const THRESHOLD_BOUNDS: (f64, f64) = (1e-300, 1e300);

/// The dynamic schedule as plain data (checkpointed as JSON; every float is finite or `None`,
/// since JSON has no NaN).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimeSchedule {
    /// EWMA of `FI`; `None` before the first report (the official `-1`).
    pub ewma: Option<f64>,
    pub threshold: f64,
    /// The last reported `FI`.
    pub last_fi: Option<f64>,
    /// Highest iteration decided so far.
    pub decided_through: u64,
    /// Decided iterations that take an alpha step (within [`DECISION_WINDOW`]).
    fire_at: BTreeSet<u64>,
    /// Whether the last decision was an alpha step.
    pub last_fired: bool,
    /// Decisions and alpha steps since the epoch began.
    pub epoch_decisions: u64,
    pub epoch_fires: u64,
}

impl PrimeSchedule {
    /// The state before iteration 0, which never takes an alpha step (no `FI` yet: the official
    /// `FI_ewma = -1` fails `0 < ewma`, and the threshold grows once).
    pub fn new(params: &DartsPrimeParams) -> Self {
        Self {
            ewma: None,
            threshold: params.initial_threshold * params.threshold_multiplier,
            last_fi: None,
            decided_through: 0,
            fire_at: BTreeSet::new(),
            last_fired: false,
            epoch_decisions: 0,
            epoch_fires: 0,
        }
    }

    /// Whether iteration `t` takes an alpha step; undecided iterations answer `true`.
    pub fn wants(&self, t: u64) -> bool {
        t > self.decided_through || self.fire_at.contains(&t)
    }

    /// Folds in the weight step of iteration `iteration` and decides iteration `iteration + 1`.
    /// Returns that decision; a non-finite `fi` is an error (see
    /// [`crate::search::WeightStepReport::check_finite`]).
    pub fn observe(
        &mut self,
        params: &DartsPrimeParams,
        iteration: u64,
        fi: f64,
    ) -> Result<bool, SearchError> {
        if !fi.is_finite() {
            return Err(SearchError::Invalid(format!(
                "darts_prime: the weight-gradient signal FI of iteration {iteration} is {fi}; the \
                 schedule needs the finite sum_p ||grad_w L_train||^2 of each weight step"
            )));
        }
        let next = iteration + 1;
        self.last_fi = Some(fi);
        let ewma = match self.ewma {
            None => fi,
            Some(e) => params.ewma * fi + (1.0 - params.ewma) * e,
        };
        self.ewma = Some(ewma);
        let fire = ewma > 0.0 && ewma < self.threshold;
        if fire {
            self.threshold *= params.threshold_multiplier.powf(-params.sched_freq);
        } else {
            self.threshold *= params.threshold_multiplier;
        }
        // A signal stuck at 0 (never `> 0`) would grow the threshold to infinity, which JSON
        // cannot hold; any finite signal is met long before these bounds.
        self.threshold = self.threshold.clamp(THRESHOLD_BOUNDS.0, THRESHOLD_BOUNDS.1);
        if fire {
            self.fire_at.insert(next);
        } else {
            self.fire_at.remove(&next);
        }
        self.decided_through = self.decided_through.max(next);
        let oldest = next.saturating_sub(DECISION_WINDOW);
        self.fire_at = self.fire_at.split_off(&oldest);
        self.last_fired = fire;
        self.epoch_decisions += 1;
        self.epoch_fires += u64::from(fire);
        Ok(fire)
    }
}
