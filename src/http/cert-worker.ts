// The worker thread src/http/tls.ts starts to make a host's self-signed certificate: selfsigned
// is loaded here only, so its code and heap go away with the worker once the PEMs are sent back.
import { parentPort, workerData } from 'node:worker_threads';
import { generate } from 'selfsigned';

export interface CertificateRequest {
  attrs: Parameters<typeof generate>[0];
  options: NonNullable<Parameters<typeof generate>[1]>;
}

export interface GeneratedPems {
  private: string;
  cert: string;
}

if (parentPort) {
  const { attrs, options } = workerData as CertificateRequest;
  const pems = await generate(attrs, options);
  parentPort.postMessage({ private: pems.private, cert: pems.cert } satisfies GeneratedPems);
}
