"""The onboarding sheet `synapse-guard member add` prints: what a new member needs, on paper.

Pure: `render_sheet(Credentials, languages) -> PDF bytes`, no network, no file. One A4 page per
language (French, English), each complete on its own: QR codes of the server address (what
Element X and Element ask for), the user ID and, under auth.totp, the `otpauth://` URI for an
authenticator app; the initial password in print (the sheet is the hand-over medium); the
first steps; in IP-only mode (a self-signed certificate) its SHA-256 fingerprint, which the
phone's warning must show before the member accepts it. The PDF uses the standard Helvetica
and Courier fonts (every viewer and printer has them, nothing to embed) in Windows-1252, which
holds French; the values printed are ASCII.
QR codes are drawn as vector squares: sharp at any print size, no image library.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

import attrs
import qrcode  # type: ignore[import-untyped]  # no type information shipped
from fpdf import FPDF, XPos, YPos
from fpdf.enums import WrapMode

LANGUAGES = ("fr", "en")
_PAGE_W = 210.0  # A4, millimetres
_MARGIN = 15.0
_QR_SIZE = 42.0
_QR_SIZE_COMPACT = 36.0  # with a certificate fingerprint, which needs the room
_INK = (0, 0, 0)
_GREY = (90, 90, 90)


@attrs.frozen
class Credentials:
    """What the member signs in with; every field printable ASCII (checked by render_sheet)."""

    homeserver: str  # the address the apps ask for, e.g. https://matrix.example.org
    user_id: str  # @alice:example.org
    password: str
    otpauth_uri: str | None = None  # None: auth.totp off (no second factor)
    # The server certificate's SHA-256 (IP-only mode), hex with or without colons; None: a CA's.
    tls_fingerprint: str | None = None

    @property
    def server_name(self) -> str:
        return self.user_id.partition(":")[2]

    @property
    def totp_secret(self) -> str | None:
        """The base32 secret in groups of four, four groups a line, for typing it by hand."""
        if self.otpauth_uri is None:
            return None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.otpauth_uri).query)
        secret = query.get("secret", [""])[0].upper()
        groups = [secret[i : i + 4] for i in range(0, len(secret), 4)]
        lines = [" ".join(groups[i : i + 4]) for i in range(0, len(groups), 4)]
        return "\n".join(lines) or None

    @property
    def fingerprint_lines(self) -> list[str]:
        """The fingerprint as openssl and phones show it (AB:CD:...), 8 pairs a line."""
        if self.tls_fingerprint is None:
            return []
        digits = self.tls_fingerprint.replace(":", "").upper()
        if len(digits) != 64 or any(c not in "0123456789ABCDEF" for c in digits):
            raise ValueError("tls_fingerprint: a SHA-256 fingerprint is 64 hex digits")
        pairs = [digits[i : i + 2] for i in range(0, 64, 2)]
        return [":".join(pairs[i : i + 8]) for i in range(0, 32, 8)]


def _french(text: dict[str, str]) -> dict[str, str]:
    """French typography: a no-break space before : ? and inside « », so no line starts with one."""
    spaced = {" :": "\xa0:", " ?": "\xa0?", "« ": "«\xa0", " »": "\xa0»"}
    for key, value in text.items():
        for plain, tied in spaced.items():
            value = value.replace(plain, tied)
        text[key] = value
    return text


# Each language's text; {placeholders} are filled in by _page. Windows-1252 only.
_FRENCH = {
    "banner": "CONFIDENTIEL \u2013 à remettre en main propre. Détruisez cette feuille une "
    "fois connecté(e).",
    "title": "Votre compte sur {server_name}",
    "intro": "Cette feuille contient votre mot de passe{and_key}. Ne la photographiez pas, ne "
    "la laissez pas traîner, ne la confiez à personne.",
    "and_key": " et la clé de votre deuxième facteur",
    "qr_server": "1. Adresse du serveur",
    "qr_user": "2. Identifiant",
    "qr_totp": "3. Appli d'authentification",
    "key": "Clé :\n{secret}",
    "qr_hint": "Les QR codes 1 et 2 se scannent avec l'appareil photo du téléphone, pour copier "
    "le texte au lieu de le taper.",
    "password": "Mot de passe initial",
    "with_code": "À chaque connexion, tapez le mot de passe puis, collés à la suite et sans "
    "espace, les 6 chiffres que montre l'appli d'authentification à ce moment-là "
    "(exemple : motdepasse + 123456 = motdepasse123456).",
    "steps": "Premiers pas",
    "step_install": "Installez Element X (conseillé) ou Element : sur Android depuis F-Droid "
    "ou Google Play, sur iPhone depuis l'App Store. L'éditeur doit être « Element ».",
    "fingerprint": "Empreinte du certificat (SHA-256)",
    "step_certificate": "Le téléphone vous avertira au sujet du certificat du serveur : "
    "acceptez-le seulement si son empreinte SHA-256 est identique, paire par paire, à celle "
    "sous l'adresse 1. Sinon, arrêtez et prévenez l'administrateur.",
    "step_totp": "Installez une appli d'authentification (par exemple Aegis depuis F-Droid, ou "
    "FreeOTP, Google Authenticator) et scannez-y le QR code 3. Elle affiche un nouveau code à "
    "6 chiffres toutes les 30 secondes.",
    "step_signin": "Ouvrez l'application et choisissez de vous connecter à un autre serveur "
    "(« Changer de fournisseur de compte » ou « Modifier ») : saisissez l'adresse 1. Puis "
    "votre identifiant 2 et le mot de passe{plus_code}.",
    "plus_code": " suivi du code à 6 chiffres",
    "step_recovery": "Enregistrez votre clé de récupération quand l'application le propose "
    "(« Configurer la récupération ») : notez-la sur papier ou dans un gestionnaire de mots "
    "de passe, rangée ailleurs que le téléphone, jamais sur cette feuille. Sans elle, un "
    "téléphone perdu emporte l'historique de vos messages.",
    "step_verify": "Vérifiez-vous avec un ou une collègue : ouvrez une discussion avec cette "
    "personne, touchez son nom puis « Vérifier », et comparez ensemble les émojis affichés, "
    "en personne ou au téléphone. S'ils diffèrent, arrêtez et prévenez l'administrateur.",
    "step_phone": "Protégez le téléphone : verrouillage de l'écran par un code, et "
    "notifications sans le contenu des messages sur l'écran verrouillé.",
    "step_destroy": "Une fois connecté(e), déchirez cette feuille en petits morceaux ou "
    "rendez-la à l'administrateur.",
    "lost": "Téléphone perdu ou volé ? Prévenez l'administrateur tout de suite : il coupe "
    "l'accès au compte en une commande.",
    "footer": "Le guide des membres explique tout cela en détail : demandez-le à l'administrateur.",
}
_ENGLISH = {
    "banner": "CONFIDENTIAL \u2013 hand over in person. Destroy this sheet once you are signed in.",
    "title": "Your account on {server_name}",
    "intro": "This sheet holds your password{and_key}. Do not photograph it, do not leave it "
    "lying around, do not give it to anyone.",
    "and_key": " and the key of your second factor",
    "qr_server": "1. Server address",
    "qr_user": "2. Username",
    "qr_totp": "3. Authenticator app",
    "key": "Key:\n{secret}",
    "qr_hint": "Scan QR codes 1 and 2 with the phone's camera to copy the text instead of "
    "typing it.",
    "password": "Initial password",
    "with_code": "Each time you sign in, type the password and then, right after it with no "
    "space, the 6 digits the authenticator app shows at that moment "
    "(example: password + 123456 = password123456).",
    "steps": "First steps",
    "step_install": "Install Element X (recommended) or Element: on Android from F-Droid or "
    'Google Play, on iPhone from the App Store. The publisher must be "Element".',
    "fingerprint": "Certificate fingerprint (SHA-256)",
    "step_certificate": "The phone will warn you about the server's certificate: accept it "
    "only if its SHA-256 fingerprint is the same, pair for pair, as the one under address 1. "
    "If not, stop and tell the administrator.",
    "step_totp": "Install an authenticator app (for example Aegis from F-Droid, or FreeOTP, "
    "Google Authenticator) and scan QR code 3 in it. It shows a new 6-digit code every 30 "
    "seconds.",
    "step_signin": 'Open the app and choose to sign in to another server ("Change account '
    'provider" or "Edit"): enter address 1. Then your username 2 and the '
    "password{plus_code}.",
    "plus_code": " followed by the 6-digit code",
    "step_recovery": 'Save your recovery key when the app offers it ("Set up recovery"): '
    "write it on paper or in a password manager, kept away from the phone, never on this "
    "sheet. Without it, a lost phone takes your message history with it.",
    "step_verify": "Verify each other with a teammate: open a chat with them, tap their name, "
    'then "Verify", and compare the emojis shown, in person or on a call. If they differ, '
    "stop and tell the administrator.",
    "step_phone": "Protect the phone: a screen lock with a PIN or passcode, and notifications "
    "that do not show message content on the lock screen.",
    "step_destroy": "Once you are signed in, tear this sheet into small pieces or give it back "
    "to the administrator.",
    "lost": "Lost or stolen phone? Tell the administrator at once: one command cuts the "
    "account off.",
    "footer": "The members' guide explains all this in detail: ask the administrator for it.",
}
TEXT: dict[str, dict[str, str]] = {"fr": _french(_FRENCH), "en": _ENGLISH}


def render_sheet(credentials: Credentials, languages: Sequence[str] = LANGUAGES) -> bytes:
    """The sheet as PDF bytes: one page per language, in the order given."""
    for value in (
        credentials.homeserver,
        credentials.user_id,
        credentials.password,
        credentials.otpauth_uri or "",
        credentials.tls_fingerprint or "",
    ):
        if not value.isascii() or not value.isprintable():
            raise ValueError("sheet values must be printable ASCII")
    credentials.fingerprint_lines  # noqa: B018 (raises ValueError if malformed)
    if not languages or any(lang not in TEXT for lang in languages):
        raise ValueError(f"languages: choose among {', '.join(LANGUAGES)}")
    pdf = FPDF(format="A4", unit="mm")
    pdf.core_fonts_encoding = "windows-1252"  # what the PDF's WinAnsiEncoding means
    pdf.set_auto_page_break(auto=False)
    pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
    pdf.set_title(TEXT[languages[0]]["title"].format(server_name=credentials.server_name))
    pdf.set_creator("synapse-guard member add")
    pdf.set_lang(languages[0])
    for lang in languages:
        _page(pdf, credentials, TEXT[lang])
    return bytes(pdf.output())


def _page(pdf: FPDF, c: Credentials, t: dict[str, str]) -> None:
    width = _PAGE_W - 2 * _MARGIN
    totp = c.otpauth_uri is not None
    compact = c.tls_fingerprint is not None  # the fingerprint and its step need ~25 mm
    qr_size = _QR_SIZE_COMPACT if compact else _QR_SIZE
    pdf.add_page()
    pdf.set_text_color(*_INK)
    pdf.set_draw_color(*_INK)

    pdf.set_font("Helvetica", "B", 9)
    pdf.set_line_width(0.6)
    pdf.multi_cell(width, 6, t["banner"], border=1, align="C", padding=1)
    pdf.ln(5)
    pdf.set_font("Helvetica", "B", 20)
    pdf.multi_cell(width, 9, t["title"].format(server_name=c.server_name), align="L")
    pdf.ln(1)
    pdf.set_font("Helvetica", "", 10)
    pdf.multi_cell(width, 5, t["intro"].format(and_key=t["and_key"] if totp else ""), align="L")
    pdf.ln(3 if compact else 5)

    codes = [(t["qr_server"], c.homeserver, c.homeserver), (t["qr_user"], c.user_id, c.user_id)]
    if c.otpauth_uri is not None:
        codes.append((t["qr_totp"], c.otpauth_uri, t["key"].format(secret=c.totp_secret)))
    column = width / 3
    left = _MARGIN + (width - column * len(codes)) / 2  # two codes: centred
    top = pdf.get_y()
    bottom = top
    for i, (label, data, caption) in enumerate(codes):
        x = left + i * column
        _qr(pdf, data, x + (column - qr_size) / 2, top, qr_size)
        pdf.set_xy(x, top + qr_size + 2)
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(column, 5, label, align="C", new_x=XPos.LEFT)
        pdf.set_font("Courier", "", 8)
        pdf.multi_cell(column, 3.6, caption, align="C", wrapmode=WrapMode.CHAR, new_x=XPos.LEFT)
        if i == 0 and compact:  # the certificate belongs to the server address
            _fingerprint(pdf, c, t, column)
        bottom = max(bottom, pdf.get_y())
    pdf.set_xy(_MARGIN, bottom + 2)
    pdf.set_font("Helvetica", "I", 8.5)
    pdf.set_text_color(*_GREY)
    pdf.multi_cell(width, 4, t["qr_hint"], align="L")
    pdf.set_text_color(*_INK)
    pdf.ln(4)

    pdf.set_line_width(0.4)
    box_top = pdf.get_y()
    pdf.set_font("Helvetica", "B", 10)
    pdf.set_x(_MARGIN + 4)
    pdf.cell(width - 8, 8, t["password"], new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_x(_MARGIN + 4)
    pdf.set_font("Courier", "B", 17)
    pdf.cell(width - 8, 9, c.password, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if totp:
        pdf.ln(1)
        pdf.set_x(_MARGIN + 4)
        pdf.set_font("Helvetica", "", 9.5)
        pdf.multi_cell(width - 8, 4.6, t["with_code"], align="L", new_x=XPos.LMARGIN)
    pdf.ln(3)
    pdf.rect(_MARGIN, box_top, width, pdf.get_y() - box_top)
    pdf.ln(4 if compact else 6)

    pdf.set_font("Helvetica", "B", 13)
    pdf.cell(width, 7, t["steps"], new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    steps = [t["step_install"]]
    if c.tls_fingerprint is not None:
        steps.append(t["step_certificate"])
    if totp:
        steps.append(t["step_totp"])
    steps += [
        t["step_signin"].format(plus_code=t["plus_code"] if totp else ""),
        t["step_recovery"],
        t["step_verify"],
        t["step_phone"],
        t["step_destroy"],
    ]
    size, line = (9.5, 4.6) if compact else (10.0, 5.0)
    for number, step in enumerate(steps, start=1):
        pdf.set_font("Helvetica", "B", size)
        pdf.cell(7, line, f"{number}.")
        pdf.set_font("Helvetica", "", size)
        pdf.multi_cell(width - 7, line, step, align="L", new_x=XPos.LMARGIN)
        pdf.ln(0.8 if compact else 1.6)
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 10)
    pdf.multi_cell(width, 5, t["lost"], align="L")
    pdf.set_y(-_MARGIN - 5)
    pdf.set_font("Helvetica", "I", 8.5)
    pdf.set_text_color(*_GREY)
    pdf.multi_cell(width, 4, t["footer"], align="C")


def _fingerprint(pdf: FPDF, c: Credentials, t: dict[str, str], column: float) -> None:
    """The certificate's fingerprint under the server address: monospace, 8 pairs a line."""
    pdf.ln(1.5)
    pdf.set_font("Helvetica", "B", 8)
    pdf.multi_cell(column, 4, t["fingerprint"], align="C", new_x=XPos.LEFT)
    pdf.set_font("Courier", "B", 9)
    pdf.multi_cell(column, 4, "\n".join(c.fingerprint_lines), align="C", new_x=XPos.LEFT)


def _qr(pdf: FPDF, data: str, x: float, y: float, size: float) -> None:
    """`data` as a QR code (error correction M, 4-module quiet zone) filling a size x size box."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    code.add_data(data)
    code.make(fit=True)
    matrix: list[list[bool]] = code.get_matrix()
    module = size / len(matrix)
    pdf.set_fill_color(*_INK)
    for row, cells in enumerate(matrix):
        column = 0
        while column < len(cells):  # one rectangle per horizontal run of dark modules
            if not cells[column]:
                column += 1
                continue
            start = column
            while column < len(cells) and cells[column]:
                column += 1
            # A hair of overlap, so that viewers' anti-aliasing draws no seams between runs.
            pdf.rect(
                x + start * module,
                y + row * module,
                (column - start) * module + 0.02,
                module + 0.02,
                style="F",
            )
