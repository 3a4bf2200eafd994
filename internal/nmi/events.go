package nmi

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/podidentity/podidentity/internal/kubescheme"
)

// NewEventRecorder returns a recorder that writes NMI's events through the API server until ctx
// ends. client-go aggregates repeated events and rate-limits each object's, on top of NMI's own
// sampling of refusals.
func NewEventRecorder(ctx context.Context, kc kubernetes.Interface, node string) EventSink {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kc.CoreV1().Events("")})
	return b.NewRecorder(kubescheme.New(), corev1.EventSource{Component: "nmi", Host: node})
}
