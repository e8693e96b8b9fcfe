//! An object of librdkafka's C API that this process owns and must free: the guard that
//! [`bounded_commit`](super::bounded_commit) and [`topic_id`](super::topic_id), the two
//! callers of the C API, put around each such object, so that every path out frees it once.

/// Frees `ptr` with `free` when dropped (a null `ptr` is left alone).
pub(crate) struct Owned<T> {
    ptr: *mut T,
    free: unsafe extern "C" fn(*mut T),
}

impl<T> Owned<T> {
    /// Takes ownership of `ptr`, to be freed with `free`.
    ///
    /// # Safety
    /// `ptr` is null or was returned by the librdkafka constructor that `free` matches, nothing
    /// else frees it, and it is not used after this guard is dropped.
    pub(crate) unsafe fn new(ptr: *mut T, free: unsafe extern "C" fn(*mut T)) -> Self {
        Self { ptr, free }
    }

    /// The object, for calls into librdkafka while the guard lives.
    pub(crate) fn ptr(&self) -> *mut T {
        self.ptr
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` came from the matching librdkafka constructor and is freed once.
            unsafe { (self.free)(self.ptr) }
        }
    }
}
