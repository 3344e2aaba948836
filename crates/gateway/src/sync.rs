//! Locking a mutex also after a panic elsewhere: every critical section in
//! the gateway leaves its data consistent, so a poisoned lock still holds
//! good data, and one panicking connection must not take the others down.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// The data behind `m`, poisoned or not.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
