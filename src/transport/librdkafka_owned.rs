//! An object of librdkafka's C API that this process owns and must free: the guard that
//! [`bounded_commit`](super::bounded_commit) and [`topic_id`](super::topic_id), the two
//! callers of the C API, put around each such object, so that every path out frees it once.

/// Frees `ptr` with `free` when dropped (a null `ptr` is left alone).
pub(crate) struct Owned<T> {
    pub(crate) ptr: *mut T,
    pub(crate) free: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the matching librdkafka constructor and is freed once.
            unsafe { (self.free)(self.ptr) }
        }
    }
}
