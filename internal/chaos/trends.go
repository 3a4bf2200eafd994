package chaos

import (
	"fmt"
	"strings"
	"time"
)

// RecoveryByKind summarises the counted recoveries by the kind of fault that preceded them, so
// that a slow kind is not hidden in the overall percentiles.
func RecoveryByKind(points []Recovery) map[FaultKind]Percentiles {
	if len(points) == 0 {
		return nil // as the JSON reads back
	}
	by := map[FaultKind][]time.Duration{}
	for _, p := range points {
		by[p.Kind] = append(by[p.Kind], time.Duration(p.Took))
	}
	out := make(map[FaultKind]Percentiles, len(by))
	for k, ds := range by {
		out[k] = Summarise(ds)
	}
	return out
}

// MemTrend is a component's resident-memory growth over the run, as the least-squares slope of
// its samples after warm-up (the first fifth of the samples, while caches and informers fill).
type MemTrend struct {
	MICMiBPerHour float64 `json:"micMiBPerHour"`
	NMIMiBPerHour float64 `json:"nmiMiBPerHour"`
	Samples       int     `json:"samples"` // used for the slope
}

// MemoryTrend fits the slopes; fewer than 4 samples after warm-up give a zero trend.
func MemoryTrend(ms []MemSample) MemTrend {
	ms = ms[len(ms)/5:]
	if len(ms) < 4 {
		return MemTrend{Samples: len(ms)}
	}
	slope := func(get func(MemSample) float64) float64 {
		var sx, sy, sxx, sxy float64
		for _, m := range ms {
			x := time.Duration(m.At).Hours()
			y := get(m)
			sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
		}
		n := float64(len(ms))
		d := n*sxx - sx*sx
		if d == 0 {
			return 0
		}
		return (n*sxy - sx*sy) / d
	}
	return MemTrend{
		MICMiBPerHour: slope(func(m MemSample) float64 { return m.MICMiB }),
		NMIMiBPerHour: slope(func(m MemSample) float64 { return m.NMIMiB }),
		Samples:       len(ms),
	}
}

// byKindLine is the text report's per-kind recovery line.
func byKindLine(m map[FaultKind]Percentiles) string {
	if len(m) == 0 {
		return "none counted"
	}
	parts := make([]string, 0, len(m))
	for _, k := range sortedKinds(m) {
		p := m[k]
		parts = append(parts, fmt.Sprintf("%s n=%d p50 %s max %s", k, p.N,
			time.Duration(p.P50).Round(time.Millisecond), time.Duration(p.Max).Round(time.Millisecond)))
	}
	return strings.Join(parts, "; ")
}
