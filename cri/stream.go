package cri

// streamChunk is how many items a Stream* response carries.
const streamChunk = 500

// sendChunks sends list as responses of at most streamChunk items: the
// one loop of the six Stream* RPCs, each with its response type.
func sendChunks[T, R any](list []T, wrap func([]T) R, send func(R) error) error {
	for len(list) > 0 {
		n := min(len(list), streamChunk)
		if err := send(wrap(list[:n])); err != nil {
			return err
		}
		list = list[n:]
	}
	return nil
}
