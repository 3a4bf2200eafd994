// Package logging applies the --log-format flag of podidentity's binaries: klog's text lines, or
// one JSON object per line for log pipelines that parse fields.
package logging

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"

	"k8s.io/klog/v2"
)

// Setup routes klog, and every logr logger taken from it (klog.Background, klog.NewKlogr), to the
// format. verbosity is klog's -v: it also bounds V-levels of loggers that bypass klog's own check.
// JSON lines carry "time", "level", "msg", "logger" and the key/value pairs as fields.
func Setup(format string, verbosity int, w io.Writer) error {
	switch format {
	case "", "text":
		return nil
	case "json":
		h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.Level(-verbosity)})
		klog.SetSlogLogger(slog.New(h))
		return nil
	}
	return fmt.Errorf("--log-format %q is not supported: use text or json", format)
}

// Reset goes back to klog's text output (tests).
func Reset() { klog.ClearLogger() }

// Verbosity is the value of klog's -v in a flag set klog.InitFlags filled (0 when absent).
func Verbosity(fs *flag.FlagSet) int {
	f := fs.Lookup("v")
	if f == nil {
		return 0
	}
	v, _ := strconv.Atoi(f.Value.String())
	return v
}
