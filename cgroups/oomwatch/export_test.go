package oomwatch

// Seen is the count the watch's notifications have read so far.
func (w *Watch) Seen() uint64 { return w.seen() }
