package main

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/podidentity/podidentity/internal/chaos"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// memSampler reads MIC's and NMI's process_resident_memory_bytes from their own metrics
// endpoints at a fixed interval, keeping the largest MIC replica and the largest NMI.
type memSampler struct {
	sb *sandbox.Sandbox

	mu      sync.Mutex
	samples []chaos.MemSample
}

func (m *memSampler) run(ctx context.Context, start time.Time, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := chaos.MemSample{At: chaos.Duration(time.Since(start).Round(time.Second))}
		for _, c := range m.sb.MIC {
			s.MICMiB = max(s.MICMiB, rss(ctx, c, sandbox.MICMetricsPort))
		}
		for _, n := range m.sb.Nodes {
			if n.NMI != nil {
				s.NMIMiB = max(s.NMIMiB, rss(ctx, n.NMI, sandbox.NMIMetricsPort))
			}
		}
		m.mu.Lock()
		m.samples = append(m.samples, s)
		m.mu.Unlock()
	}
}

func (m *memSampler) series() []chaos.MemSample {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]chaos.MemSample(nil), m.samples...)
}

// rss is the component's resident memory in MiB (0 when it does not answer, e.g. restarting).
func rss(ctx context.Context, c *sandbox.Component, port int) float64 {
	code, body, err := c.Get(ctx, port, "/metrics")
	if err != nil || code != http.StatusOK {
		return 0
	}
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "process_resident_memory_bytes "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f / (1 << 20)
			}
		}
	}
	return 0
}
