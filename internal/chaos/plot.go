package chaos

import (
	"bytes"
	"fmt"
	"time"
)

// Plot geometry (SVG user units).
const (
	plotW, panelH, margin = 720.0, 220.0, 50.0
)

// PlotSVG renders the report's time series as an SVG document with two panels sharing the time
// axis: each fault's time back to converged (dots, at the fault's offset), and MIC's and NMI's
// resident memory (lines).
func PlotSVG(r *Report) []byte {
	var b bytes.Buffer
	h := 2*panelH + 3*margin
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="11">`+"\n", plotW, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	span := time.Duration(r.Duration)
	for _, m := range r.Memory {
		span = max(span, time.Duration(m.At))
	}
	if span <= 0 {
		span = time.Second
	}
	x := func(d Duration) float64 { return margin + float64(d)/float64(span)*(plotW-2*margin) }

	// Panel 1: recovery.
	top := margin
	maxTook := time.Second
	for _, p := range r.RecoveryPoints {
		maxTook = max(maxTook, time.Duration(p.Took))
	}
	axes(&b, top, fmt.Sprintf("time back to converged after each fault (max %s)", maxTook.Round(time.Millisecond)), span, maxTook.Round(time.Millisecond).String())
	for _, p := range r.RecoveryPoints {
		y := top + panelH - float64(p.Took)/float64(maxTook)*panelH
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="#c0392b"><title>%s +%s: %s</title></circle>`+"\n",
			x(p.At), y, p.Kind, time.Duration(p.At).Round(time.Second), time.Duration(p.Took).Round(time.Millisecond))
	}

	// Panel 2: memory.
	top = 2*margin + panelH
	maxMiB := 1.0
	for _, m := range r.Memory {
		maxMiB = max(maxMiB, m.MICMiB, m.NMIMiB)
	}
	axes(&b, top, "resident memory, MiB (blue: MIC, largest replica; green: NMI, largest node)", span, fmt.Sprintf("%.0f", maxMiB))
	for _, s := range []struct {
		color string
		get   func(MemSample) float64
	}{{"#2c6fbb", func(m MemSample) float64 { return m.MICMiB }}, {"#27ae60", func(m MemSample) float64 { return m.NMIMiB }}} {
		var pts bytes.Buffer
		for _, m := range r.Memory {
			fmt.Fprintf(&pts, "%.1f,%.1f ", x(m.At), top+panelH-s.get(m)/maxMiB*panelH)
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", s.color, bytes.TrimSpace(pts.Bytes()))
	}
	fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">seed %d, %s, %g faults/minute</text>`+"\n", margin, h-10, r.Seed, time.Duration(r.Duration), r.Intensity)
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// axes draws one panel's frame, title and axis labels.
func axes(b *bytes.Buffer, top float64, title string, span time.Duration, yMax string) {
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" font-weight="bold">%s</text>`+"\n", margin, top-8, title)
	fmt.Fprintf(b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#888"/>`+"\n", margin, top, plotW-2*margin, panelH)
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" text-anchor="end">%s</text>`+"\n", margin-4, top+10, yMax)
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" text-anchor="end">0</text>`+"\n", margin-4, top+panelH)
	fmt.Fprintf(b, `<text x="%.0f" y="%.0f" text-anchor="end">%s</text>`+"\n", plotW-margin, top+panelH+14, span.Round(time.Second))
}
