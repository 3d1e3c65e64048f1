// Package bench measures berth side by side with its peers (runc, crun,
// and later containerd) on the same machine in one run, and writes the
// raw figures, a Markdown report and charts.
//
// Every comparison alternates the runtimes round by round, so that a
// slow patch of the machine hits all of them alike, and reports medians
// with min and max: the figures are distributions, not single runs.
package bench

import (
	"math"
	"slices"
	"time"
)

// Series is one measured figure for one runtime: the raw samples.
type Series struct {
	Runtime string    `json:"runtime"`
	Samples []float64 `json:"samples"` // milliseconds, or the case's unit
	Errors  int       `json:"errors"`
}

// Add records one sample.
func (s *Series) Add(d time.Duration) { s.Samples = append(s.Samples, float64(d.Microseconds())/1000) }

// AddValue records one sample in the case's unit.
func (s *Series) AddValue(v float64) { s.Samples = append(s.Samples, v) }

// Summary is a Series boiled down.
type Summary struct {
	Runtime string  `json:"runtime"`
	N       int     `json:"n"`
	Median  float64 `json:"median"`
	Min     float64 `json:"min"`
	Max     float64 `json:"max"`
	P90     float64 `json:"p90"`
	P99     float64 `json:"p99"`
	Errors  int     `json:"errors"`
}

// Summarize computes the order statistics of a series.
func (s *Series) Summarize() Summary {
	v := slices.Clone(s.Samples)
	slices.Sort(v)
	sum := Summary{Runtime: s.Runtime, N: len(v), Errors: s.Errors}
	if len(v) == 0 {
		return sum
	}
	sum.Median = Percentile(v, 50)
	sum.Min, sum.Max = v[0], v[len(v)-1]
	sum.P90 = Percentile(v, 90)
	sum.P99 = Percentile(v, 99)
	return sum
}

// Percentile of sorted values, by linear interpolation between ranks.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	rank := p / 100 * float64(len(sorted)-1)
	lo := int(math.Floor(rank))
	hi := int(math.Ceil(rank))
	frac := rank - float64(lo)
	return sorted[lo] + (sorted[hi]-sorted[lo])*frac
}
