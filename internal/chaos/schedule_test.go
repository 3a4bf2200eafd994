package chaos

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// schedules draws the schedules of many seeds for the tests below.
func schedules(t *testing.T, d time.Duration, intensity float64, seeds int) [][]Fault {
	t.Helper()
	var out [][]Fault
	for seed := uint64(1); seed <= uint64(seeds); seed++ {
		fs, err := NewSchedule(seed, d, intensity)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fs)
	}
	return out
}

func TestScheduleDrawsEveryKind(t *testing.T) {
	seen := map[FaultKind]int{}
	for _, fs := range schedules(t, 10*time.Minute, 8, 20) {
		for k, n := range CountByKind(fs) {
			seen[k] += n
		}
	}
	for _, k := range AllKinds {
		if seen[k] == 0 {
			t.Errorf("no %s in 20 ten-minute schedules (%v)", k, seen)
		}
	}
}

func TestScheduleNewKindsHaveTheirWindows(t *testing.T) {
	for _, fs := range schedules(t, 10*time.Minute, 8, 20) {
		for _, f := range fs {
			switch f.Kind {
			case ARMSlow, AADSlow:
				if f.Latency < 2*time.Second || f.For <= 0 {
					t.Errorf("%v: a slow window needs a latency of seconds and a length", f)
				}
			case ARMLROFailed, IMDSNotFound, IdentityRecreate:
				if f.For <= 0 || f.Latency != 0 {
					t.Errorf("%v: want a window without latency", f)
				}
			case NodeDelete:
				if f.For < 15*time.Second || f.For > 100*time.Second {
					t.Errorf("%v: node window outside 15s..100s", f)
				}
			}
		}
	}
}

// Reproducible with the new kinds too, and the String form names their targets.
func TestScheduleReproducibleWithNewKinds(t *testing.T) {
	a := schedules(t, 5*time.Minute, 10, 5)
	b := schedules(t, 5*time.Minute, 10, 5)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("same seeds gave different schedules")
	}
	for _, fs := range a {
		for _, f := range fs {
			if f.Kind == NodeDelete && !strings.Contains(f.String(), "node#") || f.Kind == IdentityRecreate && !strings.Contains(f.String(), "identity#") ||
				f.Kind == ARMSlow && !strings.Contains(f.String(), "latency") {
				t.Errorf("String() %q does not name the target or latency", f.String())
			}
		}
	}
}

// Exclusive windows never overlap each other, node deletions never overlap each other, and every
// window lies inside the fault phase (after the first tenth, ended before the last fifth).
func TestScheduleWindowsDoNotOverlapAndEndInTime(t *testing.T) {
	for _, d := range []time.Duration{2 * time.Minute, 10 * time.Minute} {
		start, end := d/10, d-d/5
		for _, fs := range schedules(t, d, 20, 30) {
			var emuEnd, nodeEnd time.Duration
			var emuLast, nodeLast Fault
			for _, f := range fs {
				if f.At < start || f.At+f.For > end {
					t.Errorf("%s run: %v outside the fault phase [%s, %s]", d, f, start, end)
				}
				switch {
				case f.Kind.Exclusive():
					if f.At < emuEnd {
						t.Errorf("%s run: %v overlaps %v", d, f, emuLast)
					}
					emuEnd, emuLast = f.At+f.For, f
				case f.Kind == NodeDelete:
					if f.At < nodeEnd {
						t.Errorf("%s run: %v overlaps %v", d, f, nodeLast)
					}
					nodeEnd, nodeLast = f.At+f.For, f
				}
			}
		}
	}
}
