/**
 * `events.schema.json` as the record writers (`cli/records.ts`) and the
 * recording reader (`recording.ts`) use it: one record type's required
 * keys and properties, each `$ref` (a property several record types share,
 * defined once under `definitions`) replaced by the schema it names.
 * @internal
 * @module
 */
import { createRequire } from 'node:module';

/** What the readers and writers look at in a property's schema. */
export interface PropertySchema {
  readonly type?: string | string[];
  readonly const?: unknown;
  readonly enum?: unknown[];
  readonly oneOf?: PropertySchema[];
  readonly minimum?: number;
  readonly maximum?: number;
}

/** One record type's schema (`definitions.<type>`), its properties' `$ref`s resolved. */
export interface RecordSchema {
  readonly required: readonly string[];
  readonly properties: Readonly<Record<string, PropertySchema>>;
}

type Raw = { definitions: Record<string, { required?: string[]; properties?: Record<string, PropertySchema & { $ref?: string }> }> };

const require = createRequire(import.meta.url);
let raw: Raw | undefined;
const resolved = new Map<string, RecordSchema | undefined>();

/** The schema of the record type `type` (`chroot`, `decision`, `task`, …); undefined for a type the schema lacks. */
export function recordSchema(type: string): RecordSchema | undefined {
  if (resolved.has(type)) return resolved.get(type);
  raw ??= require('chroot-guard/events.schema.json') as Raw;
  const def = Object.hasOwn(raw.definitions, type) ? raw.definitions[type] : undefined;
  let out: RecordSchema | undefined;
  if (def?.properties && def.required) {
    const properties: Record<string, PropertySchema> = {};
    for (const [key, p] of Object.entries(def.properties)) {
      const target = p.$ref?.match(/^#\/definitions\/(\w+)$/)?.[1];
      if (p.$ref && (!target || !Object.hasOwn(raw.definitions, target))) throw new Error(`events.schema.json: ${type}.${key} refers to ${p.$ref}, which it does not define`);
      properties[key] = target ? (raw.definitions[target] as PropertySchema) : p;
    }
    out = { required: def.required, properties };
  }
  resolved.set(type, out);
  return out;
}
