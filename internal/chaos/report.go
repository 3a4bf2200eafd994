package chaos

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Report is the outcome of one run (written as text and as JSON).
type Report struct {
	Seed      uint64    `json:"seed"`
	Started   time.Time `json:"started"`
	Duration  Duration  `json:"duration"`
	Intensity float64   `json:"intensityPerMinute"`
	Grace     Duration  `json:"grace"`
	Settle    Duration  `json:"settle"`

	Faults       []Fault           `json:"faults"`
	FaultsByKind map[FaultKind]int `json:"faultsByKind"`
	Workload     map[string]int    `json:"workload"` // churn actions by kind

	Requests    int `json:"requests"` // probe-client results
	Tokens      int `json:"tokens"`   // successful token results
	TokensFed   int `json:"tokensFederated"`
	TokenErrors int `json:"tokenErrors"` // failed token results (allowed: faults, unbound pods)

	Violations []Violation `json:"violations"`
	Leaked     []Violation `json:"leaked"`
	Missing    []Violation `json:"missing"`
	Stuck      []Violation `json:"stuck"`
	NoToken    []Violation `json:"noToken"`

	// Recovery is the time after each fault until the component hit was back and MIC had
	// converged (every AzureAssignedIdentity Assigned, one for each running pod's bound
	// identity); faults followed by the next one before that are not counted.
	Recovery       Percentiles `json:"recovery"`
	RecoveryPoints []Recovery  `json:"recoveryPoints,omitempty"`
	// RecoveryByKind and MemoryTrend are derived by Finish.
	RecoveryByKind  map[FaultKind]Percentiles `json:"recoveryByKind,omitempty"`
	MemoryTrend     MemTrend                  `json:"memoryTrend"`
	SettledAfter    Duration                  `json:"settledAfter"`           // after the last fault, until all Assigned
	ARMPerMinQuiet  float64                   `json:"armCallsPerMinuteQuiet"` // after settling: no churn, no faults
	ARMPerMinChaos  float64                   `json:"armCallsPerMinuteChaos"`
	MICRestarts     int                       `json:"micRestarts"`
	NMIRestarts     int                       `json:"nmiRestarts"`
	Notes           []string                  `json:"notes,omitempty"`
	InvariantsHeld  bool                      `json:"invariantsHeld"`
	MaxHeapInUseMiB float64                   `json:"checkerMaxHeapInUseMiB"`
	// Memory is MIC's and NMI's resident memory over the run (largest replica / node).
	Memory []MemSample `json:"memory,omitempty"`
}

// Recovery is one fault's time back to converged.
type Recovery struct {
	At   Duration  `json:"at"` // the fault's offset
	Kind FaultKind `json:"kind"`
	Took Duration  `json:"took"`
}

// MemSample is one memory reading, At after the start of the churn phase.
type MemSample struct {
	At     Duration `json:"at"`
	MICMiB float64  `json:"micMiB"`
	NMIMiB float64  `json:"nmiMiB"`
}

// memLine summarises one component's series: first, last and largest reading.
func memLine(ms []MemSample, get func(MemSample) float64) string {
	if len(ms) == 0 {
		return "no samples"
	}
	hi := 0.0
	for _, m := range ms {
		hi = max(hi, get(m))
	}
	return fmt.Sprintf("first %.1f, last %.1f, max %.1f MiB", get(ms[0]), get(ms[len(ms)-1]), hi)
}

// Duration is a time.Duration written as a Go duration string in JSON.
type Duration time.Duration

// MarshalJSON writes "1m30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "1m30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"1m30s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

// Percentiles summarise a set of durations.
type Percentiles struct {
	N   int      `json:"n"`
	P50 Duration `json:"p50"`
	P99 Duration `json:"p99"`
	Max Duration `json:"max"`
}

// Summarise computes the percentiles (nearest rank) of ds.
func Summarise(ds []time.Duration) Percentiles {
	if len(ds) == 0 {
		return Percentiles{}
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		if i < 0 {
			i = 0
		}
		return s[min(i, len(s)-1)]
	}
	return Percentiles{N: len(s), P50: Duration(rank(0.5)), P99: Duration(rank(0.99)), Max: Duration(s[len(s)-1])}
}

// Failures counts every broken invariant.
func (r *Report) Failures() int {
	return len(r.Violations) + len(r.Leaked) + len(r.Missing) + len(r.Stuck) + len(r.NoToken)
}

// Finish sets InvariantsHeld and the derived summaries.
func (r *Report) Finish() {
	r.InvariantsHeld = r.Failures() == 0
	r.RecoveryByKind = RecoveryByKind(r.RecoveryPoints)
	r.MemoryTrend = MemoryTrend(r.Memory)
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// ReadJSON reads a report written by WriteJSON.
func ReadJSON(rd io.Reader) (*Report, error) {
	var r Report
	if err := json.NewDecoder(rd).Decode(&r); err != nil {
		return nil, fmt.Errorf("reading the chaos report: %w", err)
	}
	return &r, nil
}

// WriteText writes the human-readable report.
func (r *Report) WriteText(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("chaos run: seed %d, %s, %g faults/minute, grace %s, settle %s (started %s)", r.Seed, time.Duration(r.Duration),
		r.Intensity, time.Duration(r.Grace), time.Duration(r.Settle), r.Started.UTC().Format(time.RFC3339))
	p("faults injected: %d (%s)", len(r.Faults), kv(r.FaultsByKind))
	wl := map[FaultKind]int{}
	for k, v := range r.Workload {
		wl[FaultKind(k)] = v
	}
	p("workload: %s", kv(wl))
	p("probe requests: %d, tokens: %d (federated %d), failed token requests: %d", r.Requests, r.Tokens, r.TokensFed, r.TokenErrors)
	p("violations (must be 0): %d", len(r.Violations))
	p("leaked identities: %d, missing assignments: %d, stuck AzureAssignedIdentities: %d, bound pods without a fresh token: %d",
		len(r.Leaked), len(r.Missing), len(r.Stuck), len(r.NoToken))
	p("back to all Assigned after a fault: n=%d p50 %s p99 %s max %s; after churn stopped: %s", r.Recovery.N,
		time.Duration(r.Recovery.P50), time.Duration(r.Recovery.P99), time.Duration(r.Recovery.Max), time.Duration(r.SettledAfter))
	p("by fault kind: %s", byKindLine(r.RecoveryByKind))
	p("ARM calls per minute: under churn and faults %.1f, quiet (after settling) %.1f", r.ARMPerMinChaos, r.ARMPerMinQuiet)
	p("restarts: MIC %d, NMI %d; checker max heap in use %.1f MiB", r.MICRestarts, r.NMIRestarts, r.MaxHeapInUseMiB)
	p("resident memory (%d samples): MIC %s; NMI %s", len(r.Memory), memLine(r.Memory, func(m MemSample) float64 { return m.MICMiB }),
		memLine(r.Memory, func(m MemSample) float64 { return m.NMIMiB }))
	p("memory trend after warm-up (%d samples): MIC %+.1f MiB/h, NMI %+.1f MiB/h", r.MemoryTrend.Samples,
		r.MemoryTrend.MICMiBPerHour, r.MemoryTrend.NMIMiBPerHour)
	for _, group := range [][]Violation{r.Violations, r.Leaked, r.Missing, r.Stuck, r.NoToken} {
		for _, v := range group {
			p("  VIOLATION %s: %s", v.Rule, v.Detail)
		}
	}
	for _, n := range r.Notes {
		p("  note: %s", n)
	}
	if r.InvariantsHeld {
		p("RESULT: every invariant held")
	} else {
		p("RESULT: %d invariant violation(s); rerun with CHAOS_SEED=%d", r.Failures(), r.Seed)
	}
}

func kv(m map[FaultKind]int) string {
	if len(m) == 0 {
		return "none"
	}
	parts := make([]string, 0, len(m))
	for _, k := range sortedKinds(m) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// sortedKinds returns m's keys in order, so that reports read the same from run to run.
func sortedKinds[V any](m map[FaultKind]V) []FaultKind {
	keys := make([]FaultKind, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}
