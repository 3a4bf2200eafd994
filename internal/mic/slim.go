package mic

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func metav1ObjectMeta(name, ns string, uid types.UID, rv string, labels map[string]string, deleting bool) metav1.ObjectMeta {
	m := metav1.ObjectMeta{Name: name, Namespace: ns, UID: uid, ResourceVersion: rv, Labels: labels}
	if deleting {
		now := metav1.Now()
		m.DeletionTimestamp = &now
	}
	return m
}
