package mic

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestDefaultOptionsAreValid(t *testing.T) {
	o := DefaultOptions()
	o.Namespace = "mic"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
}

// Each invalid option is refused with an error naming its flag (or field) and what to set.
func TestValidateNamesTheFlagAndTheFix(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Options)
		want   []string
	}{
		{"no namespace", func(o *Options) { o.Namespace = "" }, []string{"MIC_POD_NAMESPACE", "set "}},
		{"batch idle zero", func(o *Options) { o.BatchIdle = 0 }, []string{"--batch-idle", "positive"}},
		{"batch max below idle", func(o *Options) { o.BatchIdle, o.BatchMax = 2*time.Second, time.Second }, []string{"--batch-max", "--batch-idle", "at least as long"}},
		{"resync zero", func(o *Options) { o.ResyncInterval = 0 }, []string{"--syncRetryDuration", "positive"}},
		{"reconcile negative", func(o *Options) { o.ReconcileInterval = -time.Second }, []string{"--identity-assignment-reconcile-interval", "positive"}},
		{"no workers", func(o *Options) { o.Workers = 0 }, []string{"--workers", "at least 1"}},
		{"no kube writes", func(o *Options) { o.KubeWrites = 0 }, []string{"--createDeleteBatch", "at least 1"}},
		{"quarantine max below base", func(o *Options) { o.QuarantineMax = time.Second }, []string{"QuarantineMax", "at least as long"}},
		{"retry max below base", func(o *Options) { o.RetryMax = time.Millisecond }, []string{"RetryMax", "at least as long"}},
		{"retry base zero", func(o *Options) { o.RetryBase = 0 }, []string{"RetryBase", "positive"}},
		{"chunk too large", func(o *Options) { o.ChunkSize = 151 }, []string{"ChunkSize", "150"}},
		{"chunk zero", func(o *Options) { o.ChunkSize = 0 }, []string{"ChunkSize"}},
	} {
		o := DefaultOptions()
		o.Namespace = "mic"
		tc.mutate(&o)
		err := o.Validate()
		if !errors.Is(err, ErrInvalidOptions) {
			t.Errorf("%s: err = %v, want ErrInvalidOptions", tc.name, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", tc.name, err, w)
			}
		}
	}
}
