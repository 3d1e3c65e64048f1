package testutil

import "io"

// Incompressible returns n bytes that gzip cannot shrink much, the same
// every time.
func Incompressible(n int) string { return IncompressibleFrom(0, n) }

// CutAfter passes N bytes of R, then calls Cut (once) and fails as a
// dropped connection does.
type CutAfter struct {
	R   io.ReadCloser
	N   int
	Cut func()
	cut bool
}

func (c *CutAfter) Read(p []byte) (int, error) {
	if c.N <= 0 {
		if !c.cut && c.Cut != nil {
			c.cut = true
			c.Cut()
		}
		return 0, io.ErrUnexpectedEOF
	}
	if len(p) > c.N {
		p = p[:c.N]
	}
	n, err := c.R.Read(p)
	c.N -= n
	return n, err
}

// Close closes R.
func (c *CutAfter) Close() error { return c.R.Close() }

// FlipByte passes R with the byte at offset At inverted.
type FlipByte struct {
	R   io.ReadCloser
	At  int
	pos int
}

func (f *FlipByte) Read(p []byte) (int, error) {
	n, err := f.R.Read(p)
	if f.At >= f.pos && f.At < f.pos+n {
		p[f.At-f.pos] ^= 0xff
	}
	f.pos += n
	return n, err
}

// Close closes R.
func (f *FlipByte) Close() error { return f.R.Close() }
