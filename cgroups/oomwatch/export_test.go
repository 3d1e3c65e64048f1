package oomwatch

// Seen is the count the watch's notifications have read so far.
func (w *Watch) Seen() uint64 { return w.seen() }

// WatcherWithoutLoop is a Watcher that reads no notifications: what
// Kills finds is what it finds alone.
func WatcherWithoutLoop() *Watcher { return &Watcher{noLoop: true} }
