package testutil

import "math/rand/v2"

// IncompressibleFrom is n bytes of pseudo-random content from seed: a
// file whose compressed size is its size (so that the bytes a lazy pull
// fetches tell which parts of it were read), other for each seed.
func IncompressibleFrom(seed uint64, n int) string {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return string(b)
}
