// The host's TLS identity: <stateDir>/xapi-ssl.pem, the private key followed by the certificate,
// as xapi's gencert writes /etc/xensource/xapi-ssl.pem (ocaml/gencert/selfcert.ml: RSA 2048,
// CN = host name, SANs = DNS names and IPs, valid 10 years, written atomically). Generated once
// on first start and reused afterwards: clients pin it (XenCenter, XO, pool members' thumbprints).
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { isIP } from 'node:net';
import { mkdir, readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../util/files.js';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { CertificateRequest, GeneratedPems } from './cert-worker.js';

export const CERT_FILE = 'xapi-ssl.pem';
const VALID_DAYS = 365 * 10;

export async function loadOrCreateCertificate(stateDir: string, hostname: string): Promise<{ key: string; cert: string }> {
  const path = join(stateDir, CERT_FILE);
  let text: string | undefined;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  // An existing file that does not parse is an operator's problem to fix, never silently replaced:
  // replacing it would change the identity clients have pinned.
  if (text !== undefined) return parsePem(text, path);

  const pems = await generateInWorker({
    attrs: [{ name: 'commonName', value: hostname }],
    options: {
      keyType: 'rsa',
      keySize: 2048,
      algorithm: 'sha256', // selfsigned's default is sha1, which current TLS stacks reject
      notBeforeDate: new Date(),
      notAfterDate: new Date(Date.now() + VALID_DAYS * 86_400_000),
      extensions: [
        { name: 'basicConstraints', cA: false },
        { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
        { name: 'extKeyUsage', serverAuth: true },
        { name: 'subjectAltName', altNames: subjectAltNames(hostname) },
      ],
    },
  });
  // Same layout as gencert: key, blank line, certificate.
  await mkdir(stateDir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(path, `${pems.private.trim()}\n\n${pems.cert.trim()}\n`, 0o600);
  return { key: pems.private, cert: pems.cert };
}

/**
 * Runs selfsigned in a worker thread that ends when the certificate is made: the library and its
 * ASN.1 stack (~0.7 MB of source, several MB of heap) then leave with the worker's heap instead of
 * staying loaded for the life of a host that needed them once, on its first start.
 */
function generateInWorker(request: CertificateRequest): Promise<GeneratedPems> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./cert-worker.js', import.meta.url), { workerData: request });
    let pems: GeneratedPems | undefined;
    worker.once('message', (m: GeneratedPems) => (pems = m));
    worker.once('error', reject);
    worker.once('exit', (code) =>
      pems ? resolve(pems) : reject(new Error(`certificate generation ended (exit code ${code}) without a certificate`)),
    );
  });
}

function subjectAltNames(hostname: string): { type: 2 | 7; value?: string; ip?: string }[] {
  const names: { type: 2 | 7; value?: string; ip?: string }[] = [];
  const add = (n: string) => names.push(isIP(n) ? { type: 7, ip: n } : { type: 2, value: n });
  add(hostname);
  if (hostname !== '127.0.0.1') add('127.0.0.1');
  return names;
}

function parsePem(text: string, path: string): { key: string; cert: string } {
  const key = /-----BEGIN ([A-Z ]*)PRIVATE KEY-----[\s\S]*?-----END \1PRIVATE KEY-----/.exec(text)?.[0];
  const cert = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/.exec(text)?.[0];
  if (!key || !cert) throw new Error(`${path}: expected a private key and a certificate in PEM format`);
  try {
    if (!new X509Certificate(cert).checkPrivateKey(createPrivateKey(key))) throw new Error('the key does not match the certificate');
  } catch (e) {
    throw new Error(`${path}: ${(e as Error).message}`);
  }
  return { key: `${key}\n`, cert: `${cert}\n` };
}
