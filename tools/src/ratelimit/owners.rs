//! The owners' limits as the rate-limit service reads them: a map replaced whole from the
//! database whenever a change is committed (by any replica), so a decision never sees half
//! of an update.

use keygate::core::limits::Limit;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Default)]
pub struct OwnerLimits {
    map: RwLock<Arc<HashMap<String, Arc<[Limit]>>>>,
}

impl OwnerLimits {
    pub fn new() -> Arc<OwnerLimits> {
        Arc::new(OwnerLimits::default())
    }

    fn current(&self) -> Arc<HashMap<String, Arc<[Limit]>>> {
        match self.map.read() {
            Ok(map) => map.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn get(&self, owner: &str) -> Option<Arc<[Limit]>> {
        self.current().get(owner).cloned()
    }

    pub fn replace(&self, owners: HashMap<String, Arc<[Limit]>>) {
        let fresh = Arc::new(owners);
        match self.map.write() {
            Ok(mut map) => *map = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }
}
