package chaos

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

func TestRecoveryIsSummarisedByFaultKind(t *testing.T) {
	pts := []Recovery{
		{Kind: MICKill, Took: Duration(time.Second)},
		{Kind: MICKill, Took: Duration(3 * time.Second)},
		{Kind: APIServerRestart, Took: Duration(20 * time.Second)},
	}
	by := RecoveryByKind(pts)
	if got := by[MICKill]; got.N != 2 || time.Duration(got.Max) != 3*time.Second || time.Duration(got.P50) != time.Second {
		t.Errorf("MIC kill recovery = %+v, want n=2 p50 1s max 3s", got)
	}
	if got := by[APIServerRestart]; got.N != 1 || time.Duration(got.Max) != 20*time.Second {
		t.Errorf("apiserver restart recovery = %+v, want n=1 max 20s", got)
	}
	r := &Report{RecoveryPoints: pts}
	r.Finish()
	var b bytes.Buffer
	r.WriteText(&b)
	if !strings.Contains(b.String(), string(APIServerRestart)+" n=1 p50 20s max 20s") {
		t.Errorf("text report lacks the per-kind line:\n%s", b.String())
	}
}

func TestMemoryTrendIgnoresWarmUpAndFitsTheSlope(t *testing.T) {
	var ms []MemSample
	for i := range 60 { // one sample a minute for an hour
		nmi := 40.0
		if i < 10 {
			nmi = 20 + 2*float64(i) // caches filling: steep, but warm-up
		}
		ms = append(ms, MemSample{At: Duration(time.Duration(i) * time.Minute), MICMiB: 30 + 0.1*float64(i), NMIMiB: nmi})
	}
	tr := MemoryTrend(ms)
	if math.Abs(tr.MICMiBPerHour-6) > 0.01 {
		t.Errorf("MIC slope = %.3f MiB/h, want 6 (0.1 MiB a minute)", tr.MICMiBPerHour)
	}
	if math.Abs(tr.NMIMiBPerHour) > 0.01 {
		t.Errorf("NMI slope = %.3f MiB/h, want 0 once warm-up is left out", tr.NMIMiBPerHour)
	}
	if tr.Samples != 48 {
		t.Errorf("samples used = %d, want 48 (the last four fifths)", tr.Samples)
	}
	if got := MemoryTrend(ms[:3]); got.MICMiBPerHour != 0 || got.NMIMiBPerHour != 0 {
		t.Errorf("too few samples should give no trend, got %+v", got)
	}
}
